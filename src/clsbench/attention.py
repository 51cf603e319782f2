"""The attention kernel of the training steps (hyperparameter ``attention``).

torch's SDPA, transformers' default, runs a CPU training step's short sequences slower than eager
attention does (scores, mask, float32 softmax, values: three times faster forward and backward at
~56 tokens, ``benchmarks/attention_cpu.py``), and faster from a few hundred tokens on and in
inference. ``auto`` therefore trains a model loaded with SDPA with :func:`by_length` on a CPU:
eager attention while the keys are at most :data:`EAGER_UP_TO` tokens, SDPA beyond; evaluation,
prediction and GPUs keep SDPA. ``sdpa`` keeps the loaded kernel, ``eager`` is transformers' eager.
Both kernels compute the same attention, rounded differently in bf16.
"""
from __future__ import annotations

from contextlib import contextmanager

ATTENTIONS = ("auto", "sdpa", "eager")
NAME = "clsbench_by_length"  # registered in transformers' AttentionInterface and AttentionMaskInterface
EAGER_UP_TO = 256  # key tokens; the measured crossover lies between 128 and 512


def by_length(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' attention function signature: eager attention for a training pass over at most
    :data:`EAGER_UP_TO` keys on a CPU, transformers' SDPA otherwise. ``attention_mask``: SDPA's
    boolean mask (True = attend) or None (causal, or no mask, without padding)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not (module.training and query.device.type == "cpu" and key.shape[-2] <= EAGER_UP_TO):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    q_len, kv_len = scores.shape[-2:]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is None and causal and q_len > 1:  # the queries are the last q_len of the keys
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # a row masked whole (padding) gets uniform weights, as in eager
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`by_length` (with SDPA's mask) under :data:`NAME`; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, by_length)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def training_kernel(attention: str, loaded: str | None, cuda: bool) -> str | None:
    """The implementation to train with for the ``attention`` hyperparameter, the model's ``loaded``
    one and the device; None: keep the loaded one."""
    if attention == "eager":
        return "eager"
    if attention == "auto" and loaded == "sdpa" and not cuda:
        return register()
    return None


@contextmanager
def for_training(model, attention: str, cuda: bool):
    """Train ``model`` (a transformers model, or a peft model over one) with :func:`training_kernel`'s
    attention, the loaded one restored afterwards; yields the kernel's name."""
    from transformers import PreTrainedModel

    base = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    loaded = base.config._attn_implementation
    kernel = training_kernel(attention, loaded, cuda)
    if kernel is None:
        yield loaded
        return
    base.set_attn_implementation(kernel)
    try:
        yield kernel
    finally:
        base.set_attn_implementation(loaded)
