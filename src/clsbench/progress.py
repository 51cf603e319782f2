"""Progress in job logs (done / total, rate, time left) and quiet library start-up.

Log files get plain lines at most every ``every`` seconds (and at the end); a terminal gets the
same line rewritten in place. Library messages that read as errors but are expected here are
replaced by one line that says so, or dropped where they only concern an online install.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings


def quiet_libraries() -> None:
    """Filter expected library noise out of the job logs (called by every CLI at start-up).

    - transformers' load report when the only missing weights are a new classification head
      (``score.*`` / ``classifier.*``: expected, the checkpoint is a causal LM or a bare encoder):
      replaced by one line; any other missing, unexpected or mismatched key still prints in full;
    - bitsandbytes' hint to download a CPU kernel from the hub (these jobs run offline);
    - the FutureWarning of peft calling transformers' renamed ``is_gradient_checkpointing``."""
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):  # the report's loggers
        logging.getLogger(name).addFilter(_head_only_report)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage())
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


HEAD_MODULES = ("score", "classifier")  # the freshly initialised layer of *ForSequenceClassification
HEAD_KEYS = tuple(f"{m}." for m in HEAD_MODULES)


def _head_only_report(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "LOAD REPORT" not in message:
        return True
    rows = [line.split("|") for line in message.splitlines() if line.count("|") >= 2]
    keyed = [(cells[0].strip(), cells[1].strip()) for cells in rows if cells[0].strip() not in ("Key", "")
             and not set(cells[0].strip()) <= {"-", "+"}]
    if keyed and all(status == "MISSING" and key.startswith(HEAD_KEYS) for key, status in keyed):
        print(f"new classification head initialised ({', '.join(key for key, _ in keyed)}: not in the checkpoint, "
              "as expected)", flush=True)
        return False
    return True


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Counts items done out of ``total``; prints ``label: done/total (pct), rate, left`` at most
    every ``every`` seconds and once at the end."""

    def __init__(self, label: str, total: int, unit: str = "texts", every: float = 30.0, clock=time.monotonic,
                 stream=None):
        self.label, self.total, self.unit, self.every, self.clock = label, total, unit, every, clock
        self.stream = stream if stream is not None else sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.start = 0, clock()
        self.last = self.start

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        tail = f", {_duration(left)} left" if self.done < self.total and rate > 0 else f" in {_duration(elapsed)}"
        return (f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.3g} {self.unit}/s{tail}")

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.done >= self.total or now - self.last >= (0.5 if self.tty else self.every):
            self.last = now
            end = "\n" if self.done >= self.total or not self.tty else ""
            print(("\r" if self.tty else "") + self.line(), end=end, file=self.stream, flush=True)


def trainer_progress():
    """A transformers ``TrainerCallback`` that turns each log event into one line with the step,
    epoch, total and time left (in place of the raw dicts of ``PrinterCallback``)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.first_step = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            total, step = state.max_steps, state.global_step
            done = step - self.first_step
            elapsed = time.monotonic() - self.start
            left = (total - step) * elapsed / done if done else float("nan")
            head = (f"step {step}/{total}, epoch {state.epoch or 0:.2f}/{args.num_train_epochs:g}"
                    + (f", {_duration(left)} left" if done and step < total else ""))
            shown = {k: v for k, v in logs.items() if k != "epoch" and not k.endswith(("_per_second", "runtime"))}
            print(head + "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in shown.items()),
                  flush=True)

    return TrainingProgress()
