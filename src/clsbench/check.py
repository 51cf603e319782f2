"""Check a grid before any job: the config, every dataset's files, the cells, the time it will take.

``python -m clsbench.check [CONFIG ...]`` (the files ``snakemake --configfile`` would get; default:
config.yaml of the working directory) prepares every dataset of the grid into a scratch folder exactly
as the pipeline's data job would, and lists **all** problems at once, one line each with its fix: where
a message names a fix (a delimiter, an encoding, ``labels_case: fold`` ...), the fix is applied to a
copy of the dataset's settings and preparation goes on, so that the problems behind it are listed too.
It then prints the cells, an estimated wall time per approach and stage on this machine, and warns
when a grid is GPU-sized on a CPU. Exit status 2 when there is a problem. Snakemake's planning runs the
same dataset checks for every dataset not yet prepared, so ``snakemake -n`` fails on them too.

The estimate scales the committed throughput table (reports/tables/throughput.csv, measured on a
2-core CPU; on a GPU the paper's L4 figures of Appendix D) by the cell's texts, words per text (capped
at its token limit), epochs, trials and model size. It is an upper bound on epochs (early stopping
may end a cell sooner) and good to about a factor of two.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import yaml

from . import UserError, approaches, data, grid, tuning
from .io import run_cli

REPO = Path(__file__).resolve().parents[2]
THROUGHPUT = REPO / "reports" / "tables" / "throughput.csv"
# committed runs whose throughput rows stand in for approaches the default grid does not run (embed, setfit)
MORE_THROUGHPUT = (REPO / "reports" / "claims_smollm2" / "tables" / "throughput.csv",)
DATASET_STATS = REPO / "reports" / "tables" / "dataset_stats.csv"
PAPER_RESULTS = Path(__file__).with_name("reference") / "paper_results.csv"
MEASURED_ON = "bbc-news"  # the throughput table's dataset the rates are read from
MAX_FIXES = 8  # problems with a fix applied in one dataset before the check gives up on it
JOB_START_S = 15  # a training or prediction job's start: Python, torch, the model's load (CPU, 135M)
FEW_VAL = 50  # validation texts below which early stopping and tuning decide on noise
FEW_EXAMPLES = 3  # training examples of a label below which it is reported
GPU_SIZED_PARAMS = 1e9  # an LLM this large on a CPU is reported
ENCODER_SIZES = {"tiny": 4.4e6, "mini": 11e6, "small": 29e6, "base": 110e6, "large": 335e6}  # BERT's sizes


# ---------------------------------------------------------------- config files
def yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """A YAML syntax error as ``file:line:column: ...`` with what to look at."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or str(err)
    return (f"{where}: YAML syntax error ({what}); check the brackets, quotes and indentation on that line "
            "and the line before it (spaces, not tabs)")


def read_yaml(path: str | Path) -> dict:
    """One config file as a dict; a missing file, a syntax error or a non-mapping is one line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path} (resolved from {Path.cwd()}: {path.resolve()})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(yaml_problem(path, err)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: the file holds a {type(loaded).__name__}, not 'key: value' settings")
    return loaded


def read_configs(paths: list[str | Path]) -> dict:
    """Several config files merged as ``snakemake --configfile A B`` merges them (B's keys win, nested
    blocks merged key by key)."""
    from snakemake.utils import update_config

    merged: dict = {}
    for path in paths:
        update_config(merged, read_yaml(path))
    return merged


# ---------------------------------------------------------------- datasets
def settings_text(fix: dict) -> str:
    return ", ".join(f"{k}: {json.dumps(v)}" for k, v in fix.items())


class DatasetCheck(NamedTuple):
    problems: list[str]  # one line each, with its fix
    notes: list[str]  # what preparation printed, and what its figures say
    stats: dict | None  # the prepared dataset's stats.json where preparation went through
    fixes: dict  # the settings the problems' messages named (applied to reach ``stats``)


def with_fixes(attempt, settings: dict) -> tuple[object, dict, list[str]]:
    """Call ``attempt(settings)``; where it stops on a problem whose message names its fix, apply the fix
    to a copy of the settings and call it again, so that one call meets every problem a user would meet
    one run at a time. Returns (the result, or None where a problem has no fix; the fixes applied; the
    problems met, each marked with the fixes it was found under)."""
    problems: list[str] = []
    applied: dict = {}
    for _ in range(MAX_FIXES):
        try:
            return attempt({**settings, **applied}), applied, problems
        except UserError as err:
            problems.append(f"{err}" + (f" (found with {settings_text(applied)} applied)" if applied else ""))
            if not err.fix or err.fix.items() <= applied.items():
                break
            applied.update(err.fix)
    return None, applied, problems


def dataset_problems(key: str, spec: dict, out_dir: Path, base_dir: Path | None = None) -> DatasetCheck:
    """Prepare dataset ``key`` into ``out_dir`` as the data job would, meeting every problem at once
    (:func:`with_fixes`); what preparation prints becomes notes."""
    def prepare(settings: dict):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            return data.prepare(key, settings, out_dir, base_dir), printed.getvalue()

    done, fixes, problems = with_fixes(prepare, spec)
    if done is None:
        return DatasetCheck(problems, [], None, fixes)
    stats, printed = done
    notes = [line for line in printed.splitlines() if line.strip()]
    return DatasetCheck(problems, notes + data_notes(key, stats), stats, fixes)


def data_notes(key: str, stats: dict) -> list[str]:
    """What a prepared dataset's figures say a user should know before training on it."""
    notes = []
    if stats["val"]["n"] < FEW_VAL:
        notes.append(f"dataset '{key}': the validation split has {stats['val']['n']} texts; early stopping, "
                     f"thresholds and tuning decide on them (raise max_val or split.val for {FEW_VAL} or more)")
    rare = sorted(label for label, n in stats["train"]["label_counts"].items() if n < FEW_EXAMPLES)
    if rare:
        notes.append(f"dataset '{key}': label(s) with fewer than {FEW_EXAMPLES} training examples: "
                     f"{', '.join(rare[:8])}{' ...' if len(rare) > 8 else ''}")
    return notes


def checked_at_planning(config: dict, key: str) -> bool:
    """Whether Snakemake's planning checks dataset ``key``: its data (and its base's) is local."""
    spec = config["datasets"][key]
    if spec.get("source") == "derived_pairs":
        return checked_at_planning(config, spec.get("base"))
    return spec.get("source") != "hub"


def check_datasets(config: dict, keys: list[str], scratch: Path) -> tuple[list[str], list[str], dict]:
    """Every dataset of ``keys`` and the bases they derive from (bases first): (problems, notes,
    stats per dataset). A derived dataset is made from its base prepared here, so a base that is
    prepared already in the run (not among ``keys``) is prepared again in ``scratch``."""
    specs = config.get("datasets") or {}
    derived = {k: specs[k].get("base") for k in keys if specs[k].get("source") == "derived_pairs"}
    order = [*dict.fromkeys([*(b for b in derived.values() if b not in keys), *keys])]
    order.sort(key=lambda k: k in derived)
    problems: list[str] = []
    notes: list[str] = []
    stats: dict = {}
    for key in order:
        spec = specs[key]
        if key in derived and derived[key] not in stats:
            continue  # its base has problems, listed already
        checked = dataset_problems(key, spec, scratch / key, scratch / derived[key] if key in derived else None)
        problems += checked.problems
        notes += checked.notes
        if checked.stats is not None and not checked.problems:
            stats[key] = checked.stats
    return problems, notes, stats


# ---------------------------------------------------------------- time estimate
def params_from_config(config: dict) -> float | None:
    """Parameters of a transformer from its config.json: embeddings and per-layer attention + MLP."""
    d, layers = config.get("hidden_size"), config.get("num_hidden_layers")
    if not d or not layers:
        return None
    ff = config.get("intermediate_size") or 4 * d
    mlp = 2 if "bert" in str(config.get("model_type", "")) else 3  # gated MLPs have three matrices
    heads = config.get("num_attention_heads") or 1
    kv = d * config.get("num_key_value_heads", heads) // heads  # grouped-query attention: smaller k and v
    return layers * (2 * d * d + 2 * d * kv + mlp * d * ff) + config.get("vocab_size", 0) * d


def model_params(name: str, spec: dict) -> float | None:
    """A model's parameter count: from its config.json where the spec points at one here, else from
    a size written in its name or ids (``smollm2-135m``, ``Llama-3.2-1B``); None when neither says."""
    from .models import resolve_path

    for key in ("path", "config"):
        if isinstance(spec.get(key), str):
            with contextlib.suppress(UserError, OSError, ValueError):
                path = resolve_path(spec[key])
                path = path / "config.json" if path.is_dir() else path
                if path.suffix == ".json" and path.exists():
                    found = params_from_config(json.loads(path.read_text()))
                    if found:
                        return float(found)
    for text in (name, spec.get("hub_id"), spec.get("package")):
        match = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", str(text or "").lower().replace("_", "-"))
        if match:
            return float(match[1]) * (1e6 if match[2] == "m" else 1e9)
    for text in (name, spec.get("hub_id")):  # BERT-family sizes: bert-base-uncased, deberta-v3-large
        match = re.search(r"(?<![a-z])(tiny|mini|small|base|large)(?![a-z])", str(text or "").lower())
        if match:
            return ENCODER_SIZES[match[1]]
    return None


def measured_rates(path: Path = THROUGHPUT, stats_path: Path = DATASET_STATS,
                   default_config: Path = REPO / "config.yaml", more: tuple[Path, ...] = MORE_THROUGHPUT) -> dict:
    """Seconds per word of text per parameter, by (approach, mode) and by train / infer, from the
    committed throughput table (its ``bbc-news`` rows) and the words per text of that dataset; an
    approach the default grid does not run takes its rows from the first of ``more`` that has it."""
    if not path.exists() or not stats_path.exists():
        return {}
    words = {row["dataset"]: float(row["mean_words"]) for row in csv.DictReader(stats_path.open())}[MEASURED_ON]
    models = (yaml.safe_load(default_config.read_text()) or {}).get("models", {}) if default_config.exists() else {}
    rates = {}
    for table in (path, *(p for p in more if p.exists())):
        found = {}
        for row in csv.DictReader(table.open()):
            if row["dataset"] != MEASURED_ON or (row["approach"], row["mode"]) in rates:
                continue
            params = model_params(row["model"], models.get(row["model"], {})) or 1.0  # TF-IDF: per text only
            rate = {}
            for stage in ("train", "infer"):
                per_s = row.get(f"{stage}_samples_per_second")
                if per_s:
                    rate[stage] = 1.0 / (float(per_s) * words * params)
            found[(row["approach"], row["mode"])] = {**rate, "model_sized": row["model"] in models}
        rates.update(found)
    return rates


@functools.cache
def paper_rate(approach: str, model: str, metric: str, dataset: str = "WIPO") -> float:
    """A throughput figure of the paper's Appendix D (one L4, NF4 QLoRA; WIPO texts up to 1024
    tokens): texts per second, ``metric`` train_samples_per_s or infer_samples_per_s."""
    rank = {"head": "8", "instruct": "64"}[approach]
    for row in csv.DictReader(PAPER_RESULTS.open()):
        if (row["table"], row["approach"], row["rank"], row["model"], row["metric"], row["dataset"]) == \
                ("appendix_d", approach, rank, model, metric, dataset):
            return float(row["value"])
    raise KeyError((approach, model, metric, dataset))


def gpu_speedup(rates: dict) -> float | None:
    """How much faster the paper's L4 trained a head than our CPU row would at the same size and
    length: its Llama-3.2-1B head on WIPO (up to 1024 tokens) against the CPU head row scaled up."""
    cpu = rates.get(("head", "classifier"), {}).get("train")
    if cpu is None:
        return None
    seconds_gpu = 1.0 / paper_rate("head", "Llama-3.2-1B", "train_samples_per_s")
    return cpu * (1024 / 1.46) * 1.24e9 / seconds_gpu  # 1024 tokens ≈ 700 words; 1.24 B parameters


def cell_words(stats: dict, hp: dict) -> float:
    """Words a model reads per text: the dataset's mean, capped at the cell's token limit
    (≈1.46 tokens per English word with SmolLM2's tokenizer, reports/tables/dataset_stats.csv)."""
    words = stats["train"]["mean_words"]
    cap = hp.get("max_length") or hp.get("text_tokens")
    if cap and hp.get("long_text", "truncate") == "truncate":
        words = min(words, cap / 1.46)
    return max(words, 1.0)


def estimate(config: dict, cells: list, stats: dict, rates: dict, speedup: float = 1.0) -> list[dict]:
    """Estimated seconds per (approach, stage), summed over the grid's cells; cells of an unknown
    model size or dataset are counted in ``unknown``."""
    rows: dict = {}
    trained_configs = set()
    for cell in cells:
        approach = approaches.get(cell.approach)
        row = rows.setdefault(cell.approach, {"approach": cell.approach, "cells": 0, "tune": 0.0, "train": 0.0,
                                              "predict": 0.0, "unknown": 0})
        row["cells"] += 1
        if cell.dataset not in stats:
            row["unknown"] += 1
            continue
        split = stats[cell.dataset]
        hp = grid.hparams(config, cell.approach, cell.model, cell.dataset)
        rate = {m: rates.get((cell.approach, m)) for m in approach.modes}
        spec = (config.get("models") or {}).get(cell.model, {})
        params = model_params(cell.model, spec) if any(r and r["model_sized"] for r in rate.values()) else 1.0
        if params is None or not all(rate.values()):
            row["unknown"] += 1
            continue
        first = rate[approach.modes[0]]
        words = cell_words(split, hp) * params / speedup
        if approach.stages == "predict":
            shots = hp.get("shots", 0) * stats[cell.dataset]["labels"] if cell.approach == "fewshot" else 0
            words *= 1 + shots
        n_train, n_val, n_test = (split[s]["n"] for s in data.SPLITS)
        epochs = hp.get("max_epochs", 1)
        if approach.stages == "fit":
            train = n_train * words * first.get("train", 0)
        elif cell.approach == "frozen":  # features computed once, epochs of the head cost nothing
            train = (n_train + n_val) * words * first["infer"] + JOB_START_S
        elif approach.stages == "train":
            train = epochs * (n_train * words * first["train"] + n_val * words * first["infer"]) + JOB_START_S
        else:
            train = 0.0
        predict = sum((n_test + n_val) * words * r["infer"] for r in rate.values())
        predict += JOB_START_S if approach.stages != "fit" else 0
        row["train"] += train
        row["predict"] += predict
        key = (cell.dataset, cell.model, cell.approach, cell.rank)
        trials = tuning.settings(config, cell.approach)["trials"] or 0
        if trials and key not in trained_configs:
            trained_configs.add(key)
            row["tune"] += trials * train
    return list(rows.values())


def minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 3 * 86400 else f"{seconds / 86400:.0f} days"


def device_words() -> tuple[str, bool]:
    """This machine in words, and whether a CUDA GPU is present."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}", True
    except ImportError:
        pass
    from .runtime import native_bf16

    bf16 = "native bf16" if native_bf16() else "no native bf16"
    return f"CPU, {os.cpu_count()} cores, {bf16}", False


# ---------------------------------------------------------------- the report
def report(paths: list[str], out=sys.stdout) -> int:
    """Check the grid of ``paths`` and print the report; 0 when nothing stops it, else 2."""
    problems: list[str] = []
    config = read_configs(paths)
    grid.resolve_data_paths(config, paths)
    try:
        cells = grid.validated_cells(config)
    except UserError as err:
        problems.append(f"config: {err}")
        cells = []
    keys = list(dict.fromkeys(c.dataset for c in cells)) or [
        k for k, v in (config.get("datasets") or {}).items() if isinstance(v, dict) and "source" in v]
    with tempfile.TemporaryDirectory(prefix="clsbench-check-") as scratch:
        found, notes, stats = check_datasets(config, keys, Path(scratch))
    problems += found
    print(f"checked {', '.join(map(str, paths))}: {len(cells)} cell(s), {len(keys)} dataset(s)", file=out)
    for key in keys:
        if key in stats:
            s = stats[key]
            print(f"  {key}: train {s['train']['n']}, val {s['val']['n']}, test {s['test']['n']}; {s['labels']} "
                  f"labels, {'multi' if s['multi_label'] else 'single'}-label; {s['train']['mean_words']:.0f} words "
                  "per training text on average", file=out)
    if cells:
        counts = Counter(c.approach for c in cells)
        print("  cells: " + ", ".join(f"{a} {n}" for a, n in counts.items()), file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    if cells and stats:
        print_estimate(config, cells, stats, out)
    for problem in problems:
        print(f"problem: {problem}", file=out)
    print(f"{len(problems)} problem(s)" + (": fix them, then run python -m clsbench.check again" if problems
                                           else "; start the run with snakemake --cores 1 --resources gpu=1"), file=out)
    return 2 if problems else 0


def print_estimate(config: dict, cells: list, stats: dict, out) -> None:
    machine, gpu = device_words()
    rates = measured_rates()
    if not rates:
        print("no estimate: reports/tables/throughput.csv is not in this checkout", file=out)
        return
    speedup = (gpu_speedup(rates) or 1.0) if gpu else 1.0
    rows = estimate(config, cells, stats, rates, speedup)
    source = "the paper's L4 throughput (Appendix D), scaled" if gpu else "reports/tables/throughput.csv, scaled"
    print(f"estimated wall time on this machine ({machine}; from {source}; at most, within about 2x):", file=out)
    print(f"  {'approach':<10} {'cells':>5} {'tune':>8} {'train':>8} {'predict':>8}", file=out)
    for row in rows:
        unknown = f"  ({row['unknown']} cell(s) not estimated: model size, dataset or measured rate unknown)" if row["unknown"] else ""
        print(f"  {row['approach']:<10} {row['cells']:>5} {minutes(row['tune']):>8} {minutes(row['train']):>8} "
              f"{minutes(row['predict']):>8}{unknown}", file=out)
    total = sum(r["tune"] + r["train"] + r["predict"] for r in rows)
    print(f"  total about {minutes(total)} with one job at a time", file=out)
    sizes = [(m, model_params(m, spec)) for m, spec in (config.get("models") or {}).items()
             if any(c.model == m for c in cells)]
    big = [m for m, p in sizes if p and p >= GPU_SIZED_PARAMS]
    if not gpu and (big or total > 8 * 3600):
        why = f"model(s) {', '.join(big)} of 1B parameters or more" if big else f"about {minutes(total)}"
        print(f"warning: this grid is GPU-sized ({why}) and no GPU is present; python -m clsbench.starter "
              "--data FILE writes a CPU-sized grid, or run this one where a GPU is (docs/gpu.md, docs/cluster.md)", file=out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Check a grid before any job: every data problem at once, the cells, the time it will take.")
    parser.add_argument("configs", nargs="*", default=["config.yaml"],
                        help="config files, merged in order as snakemake --configfile merges them")
    args = parser.parse_args(argv)
    sys.exit(report(args.configs))


if __name__ == "__main__":
    run_cli(main)
