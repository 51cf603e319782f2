"""LoRA dropout with its mask drawn by NumPy on a CPU (hyperparameter ``lora_dropout_rng``).

torch's CPU dropout draws each element's Bernoulli variable from one serial Mersenne Twister, a
large share of a LoRA training step on a CPU (docs/throughput.md, "Where a head training step goes",
measured with ``benchmarks/profile_train.py``). :class:`NumpyDropout` draws the same distribution
(each element kept with probability 1 - p, kept ones scaled by 1 / (1 - p)) from 16-bit integers of
NumPy's SFC64 generator, seeded from torch's generator on each call, so a seed (transformers'
``set_seed``) reproduces a run and a checkpoint's saved torch RNG state continues it. p is applied at
a resolution of 2^-16 (0.05 -> 0.0500031) and the scale uses that p, so the expectation is unchanged.

The draws are the generator's raw 64-bit words read as four 16-bit integers: the numbers
``Generator.integers(0, 2**16, dtype=uint16)`` gives, which earlier versions drew, so a seed drops
what it dropped before. The mask of a bf16, fp16 or fp32 input is written by NumPy as the bits of 1.0
and 0.0 in that dtype and viewed as a tensor without a copy: torch's conversion of a bool mask cost
nearly as much as drawing the numbers (``benchmarks/dropout_cpu.py``, docs/throughput.md).
"""
from __future__ import annotations

import numpy as np
import torch

RNGS = ("auto", "torch", "numpy")
RESOLUTION = 1 << 16
ONE_BITS = {torch.bfloat16: np.uint16(0x3F80), torch.float16: np.uint16(0x3C00), torch.float32: np.uint32(0x3F800000)}


class NumpyDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` whose training-mode mask comes from NumPy (identity in evaluation mode)."""

    def __init__(self, p: float):
        super().__init__(p)
        self.threshold = round(p * RESOLUTION)  # a 16-bit draw below it drops the element
        self.scale = RESOLUTION / (RESOLUTION - self.threshold) if self.threshold < RESOLUTION else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's generator: reproducible under set_seed
        words = np.random.SFC64(seed).random_raw(-(-x.numel() // 4))
        keep = words.view(np.uint16)[: x.numel()] >= self.threshold
        one = ONE_BITS.get(x.dtype)
        if one is None:
            mask = torch.from_numpy(keep).to(x.dtype)
        else:  # 1.0 or 0.0 in x's dtype, as its bits
            mask = torch.from_numpy(np.multiply(keep, one, dtype=one.dtype)).view(x.dtype)
        return x * mask.view(x.shape).to(x.device) * self.scale  # a Python scale: in float32 for bf16 x too, rounded once


def resolve(rng: str, cuda: bool) -> str:
    """``auto``: NumPy's generator on a CPU, torch's on a GPU (where its dropout is a fused kernel)."""
    return ("torch" if cuda else "numpy") if rng == "auto" else rng


def use_for_lora(model, rng: str) -> str:
    """Put ``rng``'s dropout (:func:`resolve`d) on every LoRA layer of ``model`` that has one; returns it."""
    if rng != "numpy":
        return rng
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, drop in drops.items():
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    drops[name] = NumpyDropout(drop.p)
    return rng
