"""Saving and loading what a trained cell learned (``<cell>/adapter/``), for every approach that
trains on an LLM base: a peft checkpoint (LoRA + classification head, or LoRA of a causal LM) or a
frozen base's head alone, each beside ``base/`` (the base model's files hard-linked, its config
replaced by the cell's classification config where it has one), ``quantization_config.json`` (how the
base was quantised) and ``SHA256SUMS``: a cell folder copied or moved elsewhere still loads
(``PeftModel.from_pretrained(base_from(adapter/base), adapter)``; docs/outputs.md).
``peft.AutoPeftModelFor...from_pretrained(adapter_dir)`` also works where the cell was made (the
adapter config names the absolute path of its base)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import faults
from .hparams import param
from .io import atomic_path, write_json
from .models import local_dir

ADAPTER_BASE = "base"
FROZEN_HEAD = "score.safetensors"  # the trained weights of a frozen base (no peft)
THRESHOLDS_FILE = "thresholds.json"  # per-label thresholds chosen on validation (threshold: tuned)
QUANTIZATION_FILE = "quantization_config.json"  # BitsAndBytesConfig of the base in training (4-bit cells)
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class LoraHparams:
    """LoRA adapters (peft ``LoraConfig``) of the approaches that train them (head, instruct)."""
    lora_alpha: float = param(16, "LoRA alpha: the update is scaled by alpha / r")
    lora_alpha_ratio: float | None = param(
        None, "alpha = ratio x r for each rank (replaces lora_alpha): the update scale alpha/r held, so r8 vs r16 "
        "compares rank, not rank and scale", fill=False, exclusiveMinimum=0)
    lora_dropout: float = param(0.05, "dropout on the LoRA input", minimum=0, maximum=1)
    lora_dropout_rng: str = param("auto", "random numbers of that dropout: numpy (its SFC64 generator, faster than torch's "
                                  "on a CPU: clsbench.dropout), torch, or auto (numpy on a CPU, torch on a GPU)",
                                  choices=("auto", "torch", "numpy"), fill=False)
    lora_bias: str = param("none", "biases trained beside LoRA (peft's bias)", choices=("none", "all", "lora_only"))
    target_modules: list[str] | str = param(DECODER_PROJECTIONS, "modules that get LoRA adapters (peft's "
                                            "target_modules; all-linear: every linear layer but the output layer)")

    def lora_config(self, task_type: str, rank: int, modules_to_save: list[str] | None = None):
        from peft import LoraConfig

        return LoraConfig(task_type=task_type, r=rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          bias=self.lora_bias, target_modules=self.target_modules, modules_to_save=modules_to_save)


def save_adapter(model, final: Path, info: dict, base_config: dict | None = None,
                 thresholds: dict | None = None) -> None:
    """Save a peft model's adapter (and head), or the trainable weights of a model without peft, to
    ``final`` with ``base/``: links to the base model's files (``info``: its model.json) and, given
    ``base_config`` (AutoConfig keyword arguments, e.g. the classification labels), a config with
    them; the tuned per-label ``thresholds`` if any. Written atomically."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    final = Path(final)
    with atomic_path(final, is_dir=True) as tmp:
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)
        else:
            save_file({n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      tmp / FROZEN_HEAD)
        base_src = local_dir(info)
        base = tmp / ADAPTER_BASE
        base.mkdir()
        for f in base_src.iterdir():
            if f.is_file() and (f.name != "config.json" or base_config is None) and not f.name.startswith("."):
                link_or_copy(f.resolve(), base / f.name)
        if base_config is not None:
            AutoConfig.from_pretrained(str(base_src), **base_config).save_pretrained(base)
        cfg_path = tmp / "adapter_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = str((final / ADAPTER_BASE).resolve())
            cfg_path.write_text(json.dumps(cfg, indent=2))
        if thresholds:
            write_json(tmp / THRESHOLDS_FILE, thresholds)
        quantization = getattr(getattr(model, "config", None), "quantization_config", None)
        if quantization is not None:  # how the base was quantised in training: load it the same way
            write_json(tmp / QUANTIZATION_FILE, quantization if isinstance(quantization, dict) else quantization.to_dict())
        faults.write_sums(tmp)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (a real file: survives ``cp -r`` of the cell and costs no space), or a copy where
    the two paths are on different file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def is_peft(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def load_peft(adapter_dir: str | Path, load_base):
    """The peft model of ``adapter_dir`` on the base that ``load_base(base_dir)`` loads (quantised as
    in training)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(Path(adapter_dir) / ADAPTER_BASE), str(adapter_dir))
