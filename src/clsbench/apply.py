"""Label new texts with any trained cell, through the very code that made the cell's test predictions.

    python -m clsbench.apply --cell results/<dataset>/<model>/<approach>/r<rank>/s<seed> \\
        --input new.csv --output labelled.csv [--text-columns title body] [--mode score|generate] [--force]
    python -m clsbench.apply --best results/<dataset>/best.json --input new.csv --output labelled.csv

The input (CSV / TSV / JSONL / Parquet, by suffix) gets the dataset's preprocessing (text columns
joined by a line break, the dataset's ``max_words`` cut); the texts then become the test split of a
temporary copy of the cell's prepared dataset and the approach's own predict step (registry entry
point, the cell's hyperparameters from the config) labels them. The output, in the input's format
and written atomically, is the input's columns plus ``predicted`` (the labels, joined by ``|`` or
``--label-separator``; a label holding it is refused before any model loads),
``prob_<label>`` per label where the approach gives probabilities, and for generate mode the
``generated`` answer and whether it was ``valid``. A row that cannot be read, or an empty text,
stops the run with its line or row number before anything is written.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from . import UserError, approaches, faults, grid, layout
from .cell import HPARAMS_FILE, call
from .data import first_words
from .io import atomic_path, read_json, run_cli
from .sources import READERS, read_table, text_values

LABEL_JOIN = "|"


def parse_cell(cell: Path) -> dict:
    """dataset / model / approach / rank / seed of ``.../<dataset>/<model>/<approach>/r<rank>/s<seed>``."""
    try:
        keys = vars(layout.Cell.at(cell)[0])
    except UserError as e:
        raise UserError(f"--cell {e}") from None
    approaches.get(keys["approach"])
    return keys


def option_fix(key: str, value: str) -> str:
    """How apply's reader settings are changed: its command-line options."""
    return f"pass --{key} {value}"


def read_texts(path: Path, text_columns: list[str], max_words: int | None,
               reader: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The input table and its texts, preprocessed as the dataset's were (``reader``: format,
    delimiter and encoding of the input, from apply's options)."""
    table = read_table(path, reader or {}, fix=option_fix)
    where = str(path)
    missing = [c for c in text_columns if c not in table.columns]
    if missing:
        raise UserError(f"{where}: text column(s) {missing} not found (columns: {', '.join(map(str, table.columns))}); "
                        "name them with --text-columns")
    texts = text_values(table[text_columns[0]], where)
    for col in text_columns[1:]:
        texts = texts + "\n" + text_values(table[col], where)
    texts = texts.str.strip()
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise UserError(f"{where}: empty text at data row(s) {', '.join(map(str, empty[:5]))}"
                        f"{' ...' if len(empty) > 5 else ''} (0-based, header not counted)")
    if max_words:
        texts = texts.map(lambda t: first_words(t, max_words))
    return table, list(texts)


def staged_dataset(data_dir: Path, texts: list[str], folder: Path) -> Path:
    """A prepared dataset in ``folder`` whose test split is ``texts`` (no gold labels) and whose other
    files are the cell's (linked): what the predict steps read."""
    out = folder / "data"
    out.mkdir()
    for f in data_dir.iterdir():
        if f.is_file() and f.name not in ("test.parquet", faults.SUMS):
            (out / f.name).symlink_to(f.resolve())
    pd.DataFrame({"id": [f"row-{i}" for i in range(len(texts))], "text": texts,
                  "labels": [[] for _ in texts]}).to_parquet(out / "test.parquet", index=False)
    faults.write_sums(out)
    return out


def source_of(cell: Path, keys: dict, spec: approaches.Approach) -> str:
    """What the approach's predict step reads: the cell's adapter/, the model's folder, or the cell."""
    if spec.stages == "train":
        return str(cell / "adapter")
    if spec.stages == "predict":
        return read_json(layout.model_json_of(cell))["path"]
    return str(cell)


def cell_settings(cell: Path, keys: dict, config_path: str | Path | None) -> tuple[dict, dict]:
    """The cell's hyperparameters and its dataset's settings: the cell's own record (hparams.json,
    written by its steps; the prepared dataset's stats.json for the ``max_words`` cut and the text
    columns) where it has one, else the config the cell was made with."""
    data_dir = layout.data_dir_of(cell)
    stats = read_json(data_dir / "stats.json") if (data_dir / "stats.json").exists() else {}
    recorded = cell / HPARAMS_FILE
    if recorded.exists() and config_path is None:
        return read_json(recorded), {"max_words": stats.get("max_words"), "text_columns": stats.get("text_columns", ["text"])}
    if config_path is None and not Path("config.yaml").exists():
        raise UserError(f"{recorded}: missing, and no config.yaml in {Path.cwd()}; pass the config the cell was "
                        "made with: --config FILE")
    config_path = config_path or "config.yaml"
    config = grid.load_config(config_path)
    if keys["dataset"] not in config["datasets"]:
        raise UserError(f"--cell {cell}: dataset '{keys['dataset']}' is not in {config_path}; pass the config the "
                        "cell was made with (--config)")
    return grid.hparams(config, keys["approach"], keys["model"], keys["dataset"]), config["datasets"][keys["dataset"]]


def check_cell_files(cell: Path, spec: approaches.Approach, data_dir: Path) -> None:
    """What applying a cell reads besides the cell folder, named with the fix before anything runs (a
    copied cell needs its prepared dataset beside it; a trained one its adapter/)."""
    if not cell.is_dir():
        raise UserError(f"--cell {cell}: no such folder")
    if not (data_dir / "labels.json").exists():
        raise UserError(f"{data_dir}: the cell's prepared dataset is missing (apply reads results/data/<dataset> "
                        f"beside results/<dataset>/...); copy it with the cell, or run snakemake for "
                        f"{data_dir}/labels.json")
    if spec.stages == "train" and not (cell / "adapter").is_dir():
        raise UserError(f"{cell / 'adapter'}: missing (the cell was not trained, or was copied without it); "
                        f"copy it too, or train the cell again: snakemake -- {cell}/train_info.json")
    # damaged files are named, never deleted: a cell used here may be a copy only the user has
    fix = "copy it again from the run that made it, or run snakemake there to rebuild it"
    faults.check_sums(data_dir, then=fix, remove=False)
    if spec.stages == "train":
        faults.check_sums(cell / "adapter", then=fix, remove=False)


def check_separator(labels: list[str], separator: str, where: Path) -> None:
    """A label name holding the character that joins labels in ``predicted`` would read as two labels."""
    if not separator:
        raise UserError("--label-separator: give a character, e.g. ';'")
    clashing = [name for name in labels if separator in name]
    if clashing:
        free = next((c for c in ("|", ";", "+", "/", ",", "#") if not any(c in name for name in labels)), None)
        fix = f"pass --label-separator '{free}' (no label holds it)" if free else "pass --label-separator with a character no label holds"
        raise UserError(f"{where}: label '{clashing[0]}' holds {separator!r}, the character that joins a text's "
                        f"labels in the output ({len(clashing)} such label(s)); {fix}")


def label(cell: str | Path, input_path: str | Path, output: str | Path, config_path: str | Path | None = None,
          text_columns: list[str] | None = None, mode: str | None = None, threads: int | None = None,
          force: bool = False, settings: tuple[dict, dict] | None = None, reader: dict | None = None,
          separator: str = LABEL_JOIN) -> pd.DataFrame:
    """Label the texts of ``input_path`` with ``cell``; writes ``output`` and returns it as a table.
    ``settings``: the cell's hyperparameters and dataset settings, as best.json records them;
    ``separator`` joins a text's labels in ``predicted``."""
    cell, input_path, output = Path(cell), Path(input_path), Path(output)
    keys = parse_cell(cell)
    spec = approaches.get(keys["approach"])
    mode = mode or spec.modes[0]
    if mode not in spec.modes:
        raise UserError(f"--mode {mode}: approach '{spec.name}' has the modes {list(spec.modes)}")
    if output.suffix.lower() not in READERS:
        raise UserError(f"--output {output}: give it one of the suffixes {sorted(READERS)}")
    if output.exists() and not force:
        raise UserError(f"--output {output}: exists; pass --force to replace it")
    data_dir = layout.data_dir_of(cell)
    check_cell_files(cell, spec, data_dir)
    check_separator(read_json(data_dir / "labels.json")["labels"], separator, data_dir / "labels.json")
    hp, dataset = settings or cell_settings(cell, keys, config_path)
    table, texts = read_texts(input_path, text_columns or dataset.get("text_columns", ["text"]), dataset.get("max_words"),
                              reader)
    with tempfile.TemporaryDirectory(prefix="clsbench-apply-") as tmp:
        staged = staged_dataset(data_dir, texts, Path(tmp))
        call(spec.entry("predict"), source_of(cell, keys, spec), data_dir=str(staged), out_dir=tmp, hp=hp,
             seed=keys["seed"], threads=threads, modes=(mode,))
        pred = pd.read_parquet(Path(tmp) / layout.mode_file("predictions", mode, "parquet"))
        labels = read_json(data_dir / "labels.json")["labels"]
    out = table.copy()
    out["predicted"] = [separator.join(p) for p in pred["pred"]]
    if "probs" in pred and pred["probs"].notna().all():
        for j, name in enumerate(labels):
            out[f"prob_{name}"] = [float(p[j]) for p in pred["probs"]]
    if "generated" in pred:
        out["generated"], out["valid"] = pred["generated"].values, pred["valid"].values
    write_table(out, output)
    return out


def write_table(df: pd.DataFrame, path: Path) -> None:
    fmt = READERS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        elif fmt == "jsonl":
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")


def best_cell(best_json: str | Path, verb: str) -> str:
    """The cell best.json names, found from any folder: its path is relative to the run that wrote
    it (``<run>/results/<dataset>/best.json``); one line where it names none."""
    best = read_json(best_json)
    if not best.get("cell"):
        raise UserError(f"{best_json}: names no cell ({best.get('problem', 'no recommendation')}); fix the flagged "
                        f"cells and rerun snakemake, or pass --cell to {verb} a cell of your choice")
    cell = Path(best["cell"])
    in_run = Path(best_json).resolve().parents[2] / cell
    return str(in_run if not cell.is_absolute() and not cell.exists() and in_run.exists() else cell)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Label new texts with a trained cell.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", help="results/<dataset>/<model>/<approach>/r<rank>/s<seed>")
    which.add_argument("--best", help="results/<dataset>/best.json: the cell it names (chosen on validation)")
    parser.add_argument("--input", required=True, help="CSV / TSV / JSONL / Parquet")
    parser.add_argument("--output", required=True, help="same formats, by suffix")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    parser.add_argument("--label-separator", default=LABEL_JOIN,
                        help=f"joins a text's labels in the predicted column (default {LABEL_JOIN!r})")
    parser.add_argument("--config", help="the config the cell was made with (default: the cell's own record, "
                        "hparams.json; config.yaml for a cell without one)")
    parser.add_argument("--text-columns", nargs="+", help="default: the dataset's text_columns")
    parser.add_argument("--mode", choices=sorted({m for a in approaches.REGISTRY.values() for m in a.modes}),
                        help="inference mode (prompting approaches: score or generate); default the first")
    parser.add_argument("--format", choices=["csv", "tsv", "jsonl", "parquet"], help="of --input (default: its suffix)")
    parser.add_argument("--delimiter", help="of a CSV --input (default ,)")
    parser.add_argument("--encoding", help="of a CSV / TSV / JSONL --input (default utf-8)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    best = read_json(args.best) if args.best else {}
    cell = args.cell or best_cell(args.best, "label with")
    settings = (best["hparams"], best["dataset_settings"]) if best.get("hparams") and not args.config else None
    reader = {k: v for k, v in (("format", args.format), ("delimiter", args.delimiter), ("encoding", args.encoding)) if v}
    out = label(cell, args.input, args.output, args.config, args.text_columns, args.mode, args.threads, args.force,
                settings, reader, args.label_separator)
    print(f"{args.output}: {len(out)} texts labelled by {cell}")


if __name__ == "__main__":
    run_cli(main)
