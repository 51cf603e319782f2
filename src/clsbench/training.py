"""The training runner every Trainer-based approach (head, encoder, instruct) goes through, so that
resume, out-of-memory retry, the non-finite stop, early stopping on validation micro-F1 (best epoch
restored), the throughput record and the atomic save are one implementation.

    plan = training.plan(h, out_dir)
    args = training.arguments(SomeArguments, h, plan, env, seed, out_dir, len(train_ds), optim, ...)
    trainer = SomeTrainer(..., callbacks=training.callbacks(h, out_dir, timer))
    info = training.run(trainer, out_dir, plan, h, env, key)
    training.finish(out_dir, info, trainer, ..., save=lambda final: ...)

``h``: the approach's typed hyperparameters, a :class:`TrainerHparams` (:class:`EpochHparams` for an
approach with a loop of its own, frozen).
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import batching, health, layout, runtime, throughput
from .faults import resume_point
from .hparams import REQUIRED, param
from .io import read_json, write_jsonl, write_train_record
from .progress import trainer_progress
from .runtime import OPTIMIZERS, InferenceHparams

SCHEDULERS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class EpochHparams(InferenceHparams):
    """Training over epochs with early stopping on validation micro-F1 (best epoch kept)."""
    learning_rate: float = param(REQUIRED, "peak learning rate", exclusiveMinimum=0)
    weight_decay: float = param(0.0, "AdamW weight decay", minimum=0)
    max_grad_norm: float = param(1.0, "gradient clipping norm", exclusiveMinimum=0)
    lr_scheduler: str = param("linear", "learning-rate schedule after warmup", choices=SCHEDULERS)
    max_epochs: int = param(REQUIRED, "epochs at most; the best epoch on validation micro-F1 is kept", minimum=1)
    patience: int = param(REQUIRED, "stop after this many epochs without a better validation micro-F1", minimum=1)
    batch_size: int = param(REQUIRED, "texts per micro-batch", minimum=1)
    grad_accum: int = param(1, "micro-batches per optimizer step (effective batch = batch_size x grad_accum)",
                            minimum=1)


@dataclass(frozen=True)
class TrainerHparams(EpochHparams):
    """Training through the HF Trainer (head, encoder, instruct)."""
    optimizer: str = param("adamw_torch", "transformers' optimizer name (paged ones need a GPU: adamw_torch on a CPU)",
                           choices=OPTIMIZERS)
    warmup_ratio: float = param(0.0, "share of the optimizer steps with a linear warmup", minimum=0, maximum=1)
    group_by_length: bool = param(False, "length-grouped training batches", ref="group_by_length")
    trainer_args: dict = param({}, "further transformers TrainingArguments (TRL SFTConfig for instruct) passed through "
                               "as given, e.g. {adam_beta2: 0.98, label_smoothing_factor: 0.1}; one this block has a key "
                               "for, or that the runner sets (epochs, evaluation, checkpoints, seed, precision), is "
                               "refused", fill=False)


# TrainingArguments the typed fields set (the name to use instead) and those the runner itself sets
FROM_FIELDS = {"learning_rate": "learning_rate", "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm",
               "lr_scheduler_type": "lr_scheduler", "warmup_steps": "warmup_ratio", "warmup_ratio": "warmup_ratio",
               "optim": "optimizer", "num_train_epochs": "max_epochs", "per_device_train_batch_size": "batch_size",
               "gradient_accumulation_steps": "grad_accum", "per_device_eval_batch_size": "eval_batch_size",
               "train_sampling_strategy": "group_by_length", "bf16": "precision", "fp16": "precision",
               "use_cpu": "precision"}
RUNNER = ("output_dir", "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit",
          "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "max_steps", "logging_strategy",
          "logging_steps", "logging_nan_inf_filter", "seed", "data_seed", "report_to", "disable_tqdm")
OWN_OPTIMIZER = ("optim_args", "optim_target_modules", "lr_scheduler_kwargs")  # head/encoder build their own


def check_trainer_args(h: TrainerHparams, cls, where: str, own_optimizer: bool = False) -> None:
    """Stop on a ``trainer_args`` key ``cls`` (TrainingArguments, SFTConfig) does not have, or that the
    runner or a typed field sets; ``own_optimizer``: the approach builds its AdamW (a head learning
    rate) from ``adam_beta1/2`` and ``adam_epsilon``, so other optimizer settings would be ignored."""
    import dataclasses

    from . import UserError

    known = {f.name for f in dataclasses.fields(cls)}
    for key in h.trainer_args:
        if key not in known:
            raise UserError(f"{where}.trainer_args.{key}: not an argument of {cls.__name__}; see its documentation")
        if key in FROM_FIELDS:
            raise UserError(f"{where}.trainer_args.{key}: set by the hyperparameter {FROM_FIELDS[key]}; use that")
        if key in RUNNER or (own_optimizer and key in OWN_OPTIMIZER):
            raise UserError(f"{where}.trainer_args.{key}: set by clsbench's training runner (early stopping on "
                            "validation micro-F1, one checkpoint per epoch, its own optimizer); not configurable")

def plan(h: EpochHparams, out_dir: Path) -> dict:
    """Batch sizes of this attempt (smaller micro-batches after an out-of-memory failure)."""
    return batching.batch_plan(h, out_dir, "train")


def steps_per_epoch(h: EpochHparams, n_train: int) -> int:
    return math.ceil(n_train / (h.batch_size * h.grad_accum))


def arguments(cls, h: TrainerHparams, plan: dict, env: dict, seed: int, out_dir: Path, n_train: int, optim: str,
              **approach_args):
    """``cls`` (``TrainingArguments``, TRL's ``SFTConfig``) as every approach sets it: the attempt's batch
    plan, epochs, optimizer, schedule, evaluation and one checkpoint per epoch, the best epoch by
    validation micro-F1 restored at the end, logs five times an epoch (non-finite values kept), seeds,
    precision and device; then the approach's own and the hyperparameter ``trainer_args`` (checked by
    :func:`check_trainer_args`). A Trainer given its optimizer and schedule, as head and encoder are,
    uses those."""
    import torch

    args = dict(
        output_dir=str(Path(out_dir) / layout.CHECKPOINTS), per_device_train_batch_size=plan["batch_size"],
        per_device_eval_batch_size=plan["eval_batch_size"], gradient_accumulation_steps=plan["grad_accum"],
        num_train_epochs=h.max_epochs, learning_rate=h.learning_rate, weight_decay=h.weight_decay,
        lr_scheduler_type=h.lr_scheduler, warmup_steps=h.warmup_ratio, optim=optim,  # a float < 1: a ratio
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1_micro", greater_is_better=True,
        max_grad_norm=h.max_grad_norm, logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch(h, n_train) // 5), logging_nan_inf_filter=False,
        seed=seed, data_seed=seed, bf16=env["compute_dtype"] == torch.bfloat16, use_cpu=not env["cuda"],
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy=throughput.sampling_strategy(h.group_by_length))
    return cls(**{**args, **approach_args, **h.trainer_args})


def callbacks(h: EpochHparams, out_dir: Path, timer, stop_after_epochs: int | None = None) -> list:
    """Early stopping (``patience`` epochs without a better validation micro-F1), the evaluation
    timer, the non-finite loss stop and the progress lines; with ``stop_after_epochs``, the stop of a
    tuning trial at its rung (:func:`rung_stop`)."""
    from transformers import EarlyStoppingCallback

    rung = [rung_stop(stop_after_epochs)] if stop_after_epochs else []
    return [EarlyStoppingCallback(early_stopping_patience=h.patience), timer, runtime.finite_loss_guard(out_dir),
            trainer_progress(), *rung]


def rung_stop(epochs: int):
    """Trainer callback: stop after ``epochs`` epochs of the full schedule (a tuning trial's rung,
    :mod:`clsbench.tuning`). That epoch is still evaluated and checkpointed, so the cell that continues
    the trial resumes from it; ``.fired`` says whether it stopped the run."""
    from transformers import TrainerCallback

    class _RungStop(TrainerCallback):
        rung_epochs, fired = epochs, False

        def on_epoch_end(self, args, state, control, **kw):
            if round(state.epoch) >= epochs and not control.should_training_stop:
                control.should_training_stop = self.fired = True

    return _RungStop()


def rung_of(trainer):
    """The trainer's rung stop (:func:`rung_stop`), or None."""
    return next((cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "rung_epochs")), None)


def run(trainer, out_dir: Path, plan: dict, h: EpochHparams, env: dict, key: dict, timer) -> dict:
    """Train (resuming from the last complete epoch of the same run ``key``), with the out-of-memory
    retry and the non-finite check; returns the train_info fields every approach records."""
    import torch
    from peft.helpers import disable_input_dtype_casting
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # trainer_progress prints each log event with step, total, time left
    if env["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    last = resume_point(trainer.args.output_dir, key)
    resumed_epochs = round(read_json(Path(last) / "trainer_state.json")["epoch"]) if last else 0
    rung = rung_of(trainer)
    if rung and resumed_epochs >= rung.rung_epochs:  # a rung trial killed after its last checkpoint: the Trainer
        shutil.rmtree(trainer.args.output_dir)  # would take a step past it before stopping, so train it again
        last, resumed_epochs = resume_point(trainer.args.output_dir, key), 0
    if last:
        print(f"cell {out_dir}: resuming from {Path(last).name} (epoch {resumed_epochs} done)", flush=True)
    print(f"cell {out_dir}: {batching.describe(plan)}", flush=True)
    # under a CPU's bf16 autocast, peft's cast of each LoRA input to the adapter's float32 is undone by
    # autocast at the adapter's matmul: two copies of the activations per LoRA layer, and their backward
    autocast_bf16 = not env["cuda"] and env["compute_dtype"] == torch.bfloat16
    t0 = time.perf_counter()
    with batching.oom_retry(out_dir, "train", h, plan), disable_input_dtype_casting(trainer.model, autocast_bf16):
        result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - t0
    history = trainer.state.log_history
    runtime.check_finite(history, out_dir)
    evals = [h for h in history if "eval_f1_micro" in h]
    best = max(evals, key=lambda h: h["eval_f1_micro"]) if evals else {}
    epochs_run, best_epoch = round(trainer.state.epoch or 0), round(best.get("epoch", 0))
    at_rung = bool(rung and rung.fired) and epochs_run < h.max_epochs
    return {
        "epochs_run": epochs_run, "best_epoch": best_epoch, "best_val_f1_micro": best.get("eval_f1_micro"),
        "stopped_at_rung": at_rung,
        "undertrained": bool(health.training_flags({"epochs_run": epochs_run, "best_epoch": best_epoch,
                                                    "stopped_at_rung": at_rung})),
        "epochs_this_run": epochs_run - resumed_epochs,  # what this process trained (throughput)
        "train_wall_seconds": wall, "eval_seconds_during_training": timer.eval_seconds,
        "train_loss": result.training_loss, "resumed_from": Path(last).name if last else None,
        "micro_batch": plan["batch_size"], "grad_accum": plan["grad_accum"],
        "effective_batch": plan["batch_size"] * plan["grad_accum"], "val_batch_size": plan["eval_batch_size"],
        "n_train": len(trainer.train_dataset), "n_val": len(trainer.eval_dataset),
        "device": env["device_name"], "dtype": str(env["compute_dtype"]).replace("torch.", ""),
        "peak_memory_mb": runtime.peak_memory_mb(env),
    }


def finish(out_dir: Path, info: dict, trainer, h: TrainerHparams, env: dict, plan: dict, seed: int, kind: str,
           save) -> dict:
    """Record throughput (samples/s, tokens/s, padding, peak memory, model FLOPs / MFU: clsbench.throughput),
    write train_log.jsonl and train_info.json, ``save(out_dir / "adapter")``, drop the checkpoints
    (kept where a rung stopped the run: the cell that continues the trial resumes from them)."""
    epochs = info.pop("epochs_this_run")
    info.update(throughput.write_train(
        out_dir, lengths=[len(ids) for ids in trainer.train_dataset["input_ids"]],
        seconds=info["train_wall_seconds"] - info["eval_seconds_during_training"], epochs=epochs, plan=plan,
        order=throughput.sampling_strategy(h.group_by_length), env=env, peak_memory_mb=info["peak_memory_mb"],
        config=trainer.model.config, kind=kind, seed=seed))
    write_jsonl(out_dir / "train_log.jsonl", trainer.state.log_history)
    write_train_record(out_dir, info)
    save(out_dir / "adapter")
    if not info["stopped_at_rung"]:  # outputs complete: nothing left to resume (a rung's checkpoint is continued)
        shutil.rmtree(Path(out_dir) / layout.CHECKPOINTS, ignore_errors=True)
    return info
