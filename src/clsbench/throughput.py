"""Throughput of a cell, measured like the paper's Table 3 / Appendix D (samples per second of
training and of inference) plus what the paper leaves out: tokens per second, padding, peak
memory and model FLOPs utilisation (MFU).

A record (:func:`record`) is a flat dict whose keys name their stage, so a cell's training and
inference records merge into one ``throughput.json`` (:func:`write`) and into ``metrics.json``
beside the info files without one stage's figure overwriting the other's:

    <stage>_samples_per_second   samples / s (all epochs timed, per-epoch evaluation excluded)
    <stage>_tokens_per_second    non-padding tokens / s
    <stage>_padding_fraction     share of the padded batch positions that are padding
    <stage>_peak_memory_mb       GPU: torch.cuda.max_memory_allocated; CPU: peak RSS of the process
    <stage>_model_tflop          model FLOPs of the timed work, in 10^12 (formula below)
    <stage>_mfu                  model FLOPs / s over the device's dense bf16 peak (None on a CPU or
                                 a GPU missing from PEAK_BF16_TFLOPS)
    <stage>_batch_size, <stage>_order, device, dtype

Model FLOPs follow PaLM's convention (Chowdhery et al. 2022, appendix B): the FLOPs the model
needs, not those the hardware runs, so neither the recomputation of gradient checkpointing nor
padding counts (padding shows up as a lower MFU). For sequences of lengths T_1..T_B:

    forward (inference)           2·N·ΣT + 4·L·d·ΣT²
    training, frozen base (LoRA)  4·N·ΣT + 12·L·d·ΣT²
    training, every weight        6·N·ΣT + 12·L·d·ΣT²

N = non-embedding parameters (the decoder or encoder layers; input embeddings, LM head and
classification head left out), L = layers, d = attention width (heads × head dim). A matmul costs
2 FLOPs per weight and token forward; its backward costs the same again for the input's gradient
and again for the weight's gradient, which a frozen (4-bit) base weight does not need: hence 4·N
for QLoRA (the LoRA matrices are < 1% of N). Attention scores and values cost 4·d·T per token and
layer forward, and twice that backward (gradients of both operands are activations). Every
query-key pair is counted (no causal halving, as PaLM). The LM head is left out because the
pipeline projects only the positions it scores; generation counts the forward pass over the
prompts (a lower bound).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .io import read_json, write_json

# dense (no sparsity) bf16 tensor-core peaks of NVIDIA's data sheets, TFLOP/s; first match wins
PEAK_BF16_TFLOPS = (
    (r"H100.*PCIe", 756.0), (r"H100.*NVL", 835.0), (r"H100", 989.0), (r"H200", 989.0), (r"B200", 2250.0),
    (r"A100", 312.0), (r"L40S", 362.0), (r"\bL40\b", 181.0), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
)

# paper Table 1: per-device batch 1 with gradient accumulation (the effective batch is lost in the
# paper's text; 8 as configs/paper.yaml), eval batch 4 (decoder tuning) / 1 (instruction tuning),
# gradient checkpointing for instruction tuning; no length grouping anywhere
PAPER_SETTINGS = {
    "head": {"batch_size": 1, "grad_accum": 8, "eval_batch_size": 4},
    "instruct": {"batch_size": 1, "grad_accum": 8, "eval_batch_size": 1, "gradient_checkpointing": True},
}

# model FLOPs per token: (× N, × L·d·T) for each kind of pass (see the module docstring)
PASSES = {"forward": (2, 4), "train_lora": (4, 12), "train_full": (6, 12)}
ORDERS = ("sequential", "sorted", "random", "group_by_length")


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a GPU in FLOP/s, from its name (``torch.cuda.get_device_name``); None for
    a CPU or a GPU not in :data:`PEAK_BF16_TFLOPS`."""
    if not device_name or device_name.lower().startswith("cpu"):
        return None
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops * 1e12
    return None


def model_flops(n_params: int, lengths: list[int], kind: str = "forward", n_layers: int = 0,
                attn_dim: int = 0) -> float:
    """Model FLOPs of one pass over sequences of token ``lengths`` (``kind``: forward,
    train_lora, train_full; see the module docstring)."""
    dense, attention = PASSES[kind]
    tokens = sum(lengths)
    squares = sum(t * t for t in lengths)
    return float(dense * n_params * tokens + attention * n_layers * attn_dim * squares)


def mfu(flops: float | None, seconds: float, device_name: str | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's dense bf16 peak."""
    peak = peak_flops(device_name)
    if peak is None or flops is None or seconds <= 0:
        return None
    return flops / seconds / peak


@dataclass(frozen=True)
class Shape:
    n_params: int  # non-embedding parameters
    n_layers: int
    attn_dim: int  # heads × head dim


def shape(config) -> Shape:
    """What the FLOPs formula needs from a HF config; the model body (no LM or classification
    head) is built on the meta device, so nothing is allocated and any architecture works."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        body = AutoModel.from_config(config)
    n = sum(p.numel() for name, p in body.named_parameters() if "embed" not in name)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(int(n), int(config.num_hidden_layers), int(heads * head_dim))


def batches(lengths: list[int], batch_size: int, order: str = "sequential", seed: int = 0) -> list[list[int]]:
    """The batches (as lists of token lengths) that a batch size and an order form:

    sequential       dataset order (the HF Trainer's evaluation loop; the paper's inference)
    sorted           ascending length (classifier.predict_logits and instruct's inference)
    random           shuffled (the Trainer's default training sampler)
    group_by_length  transformers' LengthGroupedSampler (``train_sampling_strategy="group_by_length"``)

    The shuffled orders are drawn with ``seed``, not with the Trainer's own generator: their padding
    is the setting's, not the exact run's."""
    import numpy as np

    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {ORDERS}")
    if order == "sorted":
        idx = list(np.argsort(lengths, kind="stable"))
    elif order == "random":
        idx = list(np.random.default_rng(seed).permutation(len(lengths)))
    elif order == "group_by_length":
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        idx = list(LengthGroupedSampler(batch_size, lengths=list(lengths),
                                        generator=torch.Generator().manual_seed(seed)))
    else:
        idx = list(range(len(lengths)))
    return [[lengths[i] for i in idx[start:start + batch_size]] for start in range(0, len(idx), batch_size)]


def padding_fraction(groups: list[list[int]]) -> float:
    """Share of the padded positions (each batch padded to its longest sequence) that are padding."""
    padded = sum(max(g) * len(g) for g in groups if g)
    return 0.0 if padded == 0 else 1.0 - sum(map(sum, groups)) / padded


def sampling_strategy(group_by_length: bool) -> str:
    """``train_sampling_strategy`` of the Trainer for the ``group_by_length`` hyperparameter:
    true batches texts of similar length together (less padding)."""
    return "group_by_length" if group_by_length else "random"


def record(stage: str, *, lengths: list[int], seconds: float, batch_size: int, order: str, env: dict,
           peak_memory_mb: float | None = None, config=None, kind: str = "forward", repeats: int = 1,
           seed: int = 0, **extra) -> dict:
    """One stage's throughput record (keys ``<stage>_...``, see the module docstring).

    ``lengths``: token lengths of the samples of one pass (epoch), ``repeats`` passes of them timed
    in ``seconds``; ``batch_size`` and ``order`` (:func:`batches`) give the padding; ``env`` is
    ``runtime.device_setup()``'s (device name, compute dtype); ``config`` (the model's HF config) and
    ``kind`` give the model FLOPs and MFU; ``extra`` keys are added with the stage prefix."""
    groups = batches(lengths, batch_size, order, seed)
    flops = None
    if config is not None:
        s = shape(config)
        flops = repeats * model_flops(s.n_params, lengths, kind, s.n_layers, s.attn_dim)
    device = env.get("device_name")
    rec = {
        f"{stage}_samples_per_second": repeats * len(lengths) / seconds if seconds > 0 else None,
        f"{stage}_tokens_per_second": repeats * sum(lengths) / seconds if seconds > 0 else None,
        f"{stage}_padding_fraction": padding_fraction(groups),
        f"{stage}_peak_memory_mb": peak_memory_mb,
        f"{stage}_model_tflop": None if flops is None else flops / 1e12,
        f"{stage}_mfu": mfu(flops, seconds, device),
        f"{stage}_batch_size": batch_size, f"{stage}_order": order, f"{stage}_seconds": seconds,
        "device": device, "dtype": str(env.get("compute_dtype", "")).replace("torch.", "") or None,
    }
    rec.update({f"{stage}_{key}": value for key, value in extra.items()})
    return rec


def write_train(cell_dir: str | Path, *, lengths: list[int], seconds: float, epochs: int, plan: dict, order: str,
                env: dict, peak_memory_mb: float, config, kind: str, seed: int) -> dict:
    """A trainer's ``train_`` record (:func:`record` with the Trainer's micro-batch and sampling order),
    merged into the cell's throughput.json. ``epochs``: epochs this process trained (a run resumed
    after its last epoch trained none: no figures)."""
    if epochs <= 0:
        return {"train_samples_per_second": None, "train_tokens_per_second": None}
    return write(cell_dir, record("train", lengths=lengths, seconds=seconds, batch_size=plan["batch_size"],
                                  order=order, env=env, peak_memory_mb=peak_memory_mb, config=config,
                                  kind=kind, repeats=epochs, seed=seed, grad_accum=plan["grad_accum"]))


def restage(rec: dict, old: str, new: str) -> dict:
    """``rec`` with its ``<old>_...`` keys renamed ``<new>_...`` (e.g. infer -> infer_generate, so
    the records of two inference modes of one cell sit side by side in its throughput.json)."""
    return {new + key[len(old):] if key.startswith(old + "_") else key: value for key, value in rec.items()}


def write(cell_dir: str | Path, rec: dict) -> dict:
    """Merge ``rec`` into ``<cell_dir>/throughput.json`` and return it: the training and the inference
    records of a cell land in one file, and a rerun of a stage replaces that stage's keys."""
    path = Path(cell_dir) / "throughput.json"
    merged = read_json(path) if path.exists() else {}
    merged.update(rec)
    write_json(path, merged)
    return rec
