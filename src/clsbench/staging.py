"""One model load per trained cell: the training job predicts from its final model, and the predict
step takes those predictions over instead of loading the model again.

After saving ``adapter/``, a training job (head, frozen, encoder, instruct) predicts the splits the
predict rule asks for into ``<cell>/.staged_predictions/``, files laid out as the predict step writes
them, with a manifest of what they were computed from: the adapter's checksums, the cell's
hyperparameters, the prepared data's checksums, the splits and modes. The predict step
(``python -m clsbench.cell predict``, rule ``predict``) moves them into place when the manifest
matches what it is asked for; otherwise (none staged, another adapter or setting, the folder
removed after a ``--forcerun``) it loads the model and predicts, so it still rebuilds predictions
without retraining. The staged model is put in the form the predict step loads
(:func:`inference_form`), so both give the same predictions (tests/test_staging.py).

A failure while predicting in the training job (out of memory, say) costs nothing but the saved
load: the job says so and leaves the prediction to the predict step, which has its own retry.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from . import layout, runtime
from .faults import SUMS, check_sums
from .io import read_json, write_json

STAGED = ".staged_predictions"
MANIFEST = "manifest.json"


def splits_asked(out_dir: str | Path) -> tuple[str, ...]:
    """What the predict step will ask a trained folder for: test and validation (rule ``predict``),
    validation only for a tuning trial (rule ``predict_trial``)."""
    return ("val",) if layout.is_trial(out_dir) else ("test", "val")


def fingerprint(adapter_dir: str | Path, hp: dict, data_dir: str | Path, splits, modes) -> dict:
    """What staged predictions depend on: the adapter's and the data's checksum files, the
    hyperparameters as the cell's steps get them, the splits and the modes (None: every mode)."""
    def digest(folder: Path) -> str | None:
        sums = Path(folder) / SUMS
        return hashlib.sha256(sums.read_bytes()).hexdigest() if sums.exists() else None

    return {"adapter": digest(adapter_dir), "data": digest(data_dir), "hparams": hp, "splits": list(splits),
            "modes": list(modes) if modes else None}


class Stager:
    """What ``clsbench.cell train`` hands an approach's ``train`` as ``predict_after``: called with
    ``predict_into(folder, splits)``, which writes the predictions of ``splits`` into ``folder`` as
    the predict step writes them into the cell."""

    def __init__(self, out_dir: str | Path, hp: dict, data_dir: str | Path):
        self.out_dir, self.hp, self.data_dir = Path(out_dir), hp, data_dir
        self.splits = splits_asked(out_dir)

    def __call__(self, predict_into) -> bool:
        staged = self.out_dir / STAGED
        shutil.rmtree(staged, ignore_errors=True)
        print(f"cell {self.out_dir}: predicting {', '.join(self.splits)} with the trained model in memory",
              flush=True)
        try:
            predict_into(staged, self.splits)
        except Exception as e:  # noqa: BLE001 - the training is saved; the predict step predicts instead
            shutil.rmtree(staged, ignore_errors=True)
            print(f"cell {self.out_dir}: predicting in the training job failed ({type(e).__name__}: {e}); "
                  "the predict step will load the model and predict", flush=True)
            return False
        write_json(staged / MANIFEST, fingerprint(self.out_dir / "adapter", self.hp, self.data_dir, self.splits, None))
        return True


def take(out_dir: str | Path, adapter_dir: str | Path, hp: dict, data_dir: str | Path, splits, modes) -> bool:
    """Move the staged predictions of ``out_dir`` into place if they are what is asked for (a
    corrupted adapter is removed with them, as the predict step does); False if there are none that fit."""
    out_dir, staged = Path(out_dir), Path(out_dir) / STAGED
    if not (staged / MANIFEST).exists():
        return False
    wanted = fingerprint(adapter_dir, hp, data_dir, splits, modes)
    if read_json(staged / MANIFEST) != wanted:
        print(f"cell {out_dir}: the predictions staged by training are for other settings; predicting anew")
        shutil.rmtree(staged)
        return False
    check_sums(adapter_dir, derived=(staged,))
    (staged / MANIFEST).unlink()
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        target = out_dir / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "throughput.json" and target.exists():  # the training's record and the inference's
            write_json(target, {**read_json(target), **read_json(path)})
        else:
            os.replace(path, target)  # atomic per file; a kill midway leaves no manifest: the next run predicts
    shutil.rmtree(staged)
    print(f"cell {out_dir}: took over the predictions of its training job (no second model load)")
    return True


def inference_form(model, compute_dtype, h, env: dict):
    """The trained model as the predict step loads it: evaluation mode, and the weights that are
    neither 4-bit nor LoRA in ``compute_dtype`` (training keeps them in float32:
    ``prepare_model_for_kbit_training``; a quantised base loads them in the compute dtype), its forward
    pass no longer under the autocast that accelerate wraps a mixed-precision Trainer's model in, and
    its 4-bit layers set up for prediction as a loaded model's are (:func:`clsbench.runtime.inference_weights`;
    the hook that makes the embeddings' output require gradients removed, as it keeps the CPU kernel off too)."""
    import torch
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    runtime.inference_weights(model, h, env)
    for module in model.modules():
        if getattr(module, "_require_grads_hooks", None):
            module.disable_input_require_grads()
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.dtype != compute_dtype and "lora_" not in name and p.dtype != torch.uint8:
            p.data = p.data.to(compute_dtype)
    return model.eval()
