"""Where everything of a run lives: the one home of every path (rules, tables, best.json, apply, export).

    results/data/<dataset>/                         prepared splits, labels.json
    results/models/<model>/model.json               where the prepared model is
    results/<dataset>/<model>/<approach>/r<rank>/   a configuration: tuned.json, tune/t<trial>/s<seed>/
    results/<dataset>/<model>/<approach>/r<rank>/s<seed>/   a cell: its mode files, val/ (validation)
    results/logs/..., results/benchmarks/...        the same cell and trial paths, per job

A cell's first inference mode writes ``predictions.parquet``, ``predict_info.json``, ``metrics.json``;
another mode adds its name (``metrics_generate.json``): :func:`mode_file`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import UserError

RESULTS = "results"
KEYS = "{dataset}/{model}/{approach}/r{rank}"
CONFIGURATION = f"{RESULTS}/{KEYS}"
CELL = f"{CONFIGURATION}/s{{seed}}"
TRIAL = f"{CONFIGURATION}/tune/t{{trial}}/s{{seed}}"
CHECKPOINTS = "checkpoints"  # <cell or trial>/checkpoints: what a killed job, or a cell continuing a trial, resumes from
LOG, BENCH = f"{RESULTS}/logs/{KEYS}/s{{seed}}", f"{RESULTS}/benchmarks/{KEYS}/s{{seed}}"
TRIAL_LOG = f"{RESULTS}/logs/{KEYS}/tune/t{{trial}}/s{{seed}}"
TRIAL_BENCH = f"{RESULTS}/benchmarks/{KEYS}/tune/t{{trial}}/s{{seed}}"
DATA = f"{RESULTS}/data/{{dataset}}"
MODEL_JSON = f"{RESULTS}/models/{{model}}/model.json"
FIRST_MODES = ("score", "classifier")  # the mode whose files carry no suffix
_CELL_DIR = re.compile(r"(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?P<approach>[^/]+)/r(?P<rank>\d+)/s(?P<seed>\d+)$")


def is_trial(folder: str | Path) -> bool:
    """Whether ``folder`` is a tuning trial's (``.../tune/t<trial>/s<seed>``), not a cell's."""
    folder = Path(folder)
    return folder.parent.parent.name == "tune" and re.fullmatch(r"t\d+", folder.parent.name) is not None


def mode_file(stem: str, mode: str | None = None, ext: str = "json") -> str:
    """``metrics.json`` of the first mode, ``metrics_generate.json`` of the generate mode (``stem`` any of
    predictions / predict_info / metrics, ``ext`` parquet for predictions)."""
    return f"{stem}.{ext}" if mode in (None, *FIRST_MODES) else f"{stem}_{mode}.{ext}"


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: an approach on a model and dataset, with a LoRA rank (0 without) and a seed."""

    dataset: str
    model: str
    approach: str
    rank: int
    seed: int

    @property
    def path(self) -> str:
        """The cell's folder, relative to the run's working directory."""
        return CELL.format(**vars(self))

    @property
    def configuration(self) -> str:
        """Its configuration's folder (every seed and the tuning of dataset × model × approach × rank)."""
        return CONFIGURATION.format(**vars(self))

    def trial(self, trial: int) -> str:
        """The folder of tuning trial ``trial`` trained with this cell's seed."""
        return TRIAL.format(**vars(self), trial=trial)

    @classmethod
    def at(cls, folder: str | Path) -> tuple[Cell, Path]:
        """(the cell, its run's ``results/`` folder) of a cell folder anywhere on disk; a folder that is not
        one is refused, naming the layout."""
        given, folder = folder, Path(folder).resolve()
        match = _CELL_DIR.search(folder.as_posix())
        if not match or len(folder.parts) < 7:
            raise UserError(f"{given}: not a cell folder (results/<dataset>/<model>/<approach>/r<rank>/s<seed>)")
        keys = match.groupdict()
        cell = cls(keys["dataset"], keys["model"], keys["approach"], int(keys["rank"]), int(keys["seed"]))
        return cell, folder.parents[4]

    def data_dir(self, results: str | Path) -> Path:
        """The prepared dataset the cell reads, in the run whose ``results/`` folder is ``results``."""
        return Path(results) / "data" / self.dataset

    def model_json(self, results: str | Path) -> Path:
        return Path(results) / "models" / self.model / "model.json"


def data_dir_of(cell_folder: str | Path) -> Path:
    """The prepared dataset of the cell in ``cell_folder``, in the same run."""
    cell, results = Cell.at(cell_folder)
    return cell.data_dir(results)


def model_json_of(cell_folder: str | Path) -> Path:
    """The prepared model's model.json of the cell in ``cell_folder``, in the same run."""
    cell, results = Cell.at(cell_folder)
    return cell.model_json(results)


def metrics_of(path: str | Path) -> tuple[Cell, str | None]:
    """(the cell, its mode or None for the first) of a cell's ``metrics[_<mode>].json``."""
    path = Path(path)
    match = re.fullmatch(r"metrics(?:_(?P<mode>[a-z]+))?\.json", path.name)
    try:
        if match:
            return Cell.at(path.parent)[0], match["mode"]
    except UserError:
        pass
    raise UserError(f"{path}: not a cell's metrics path (results/<dataset>/<model>/<approach>/r<rank>/s<seed>/"
                    "metrics.json)")
