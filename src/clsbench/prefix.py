"""The prompt prefix a batch shares, computed once: every instruct prompt starts with the same
instruction and allowed labels (Appendix B; with few-shot, the solved examples too), about half of a
training sequence on the default grid. :func:`shared_length` finds how many leading tokens every
row of a batch has in common before anything it is scored on; :func:`split_batch` runs those once
(batch 1, the KV cache kept with its graph) and returns the batch's remaining tokens with that cache
repeated for each row, so the model runs the prefix once instead of once per row. Inference
(:mod:`clsbench.scoring`'s score and generate modes) does the same with :func:`common_length` and
:func:`prefix_cache`.

Causal attention makes this exact: a prefix position sees only the prefix, so its keys and values
are the same in every row, and the gradient through the repeated cache is the sum of the rows'
gradients, as before. One difference with dropout: the prefix's LoRA dropout mask is drawn once per
batch, not once per row (the same distribution for each row; the rows' prefix noise is shared).
"""
from __future__ import annotations

MIN_SHARED_TOKENS = 8  # a floor, not a measured break-even: shorter prefixes are not shared


def shared_length(input_ids, attention_mask=None, labels=None) -> int:
    """Leading tokens that every row has in common, ending before each row's first scored
    position (the position whose next token carries a loss) and before its last real token."""
    if input_ids.size(0) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    length = int(same.long().cumprod(0).sum())
    if attention_mask is not None:
        length = min(length, int(attention_mask.sum(dim=1).min()) - 1)
    if labels is not None:
        scored = labels[:, 1:] != -100  # position t is scored when token t+1 carries a loss
        rows = scored.any(dim=1)
        if rows.any():
            length = min(length, int(scored[rows].float().argmax(dim=1).min()))
    return max(length, 0)


def common_length(rows: list[list[int]]) -> int:
    """:func:`shared_length` of token id lists of different lengths (a token left to each)."""
    import torch

    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=-1)
    return shared_length(ids, ids >= 0)


def prefix_cache(model, ids, repeats: int, **inputs):
    """The KV cache of one prefix (``ids``: 1 x length), repeated for ``repeats`` rows. Through the
    model's own forward (a Trainer's model is wrapped in its autocast there), one position's logits."""
    cache = model(input_ids=ids, use_cache=True, logits_to_keep=1, **inputs).past_key_values
    cache.batch_repeat_interleave(repeats)
    return cache


def split_batch(model, inputs: dict, minimum: int = MIN_SHARED_TOKENS) -> tuple[dict, int]:
    """``inputs`` of a causal LM's batch (right-padded) as the remaining tokens after the shared
    prefix, with ``past_key_values`` of that prefix computed once and repeated for each row, and
    the number of prefix tokens; the inputs unchanged and 0 where fewer than ``minimum`` are shared.
    The attention mask stays whole (prefix + rest), as the model expects beside a cache."""
    ids = inputs["input_ids"]
    length = shared_length(ids, inputs.get("attention_mask"), inputs.get("labels"))
    if length < minimum:
        return inputs, 0
    first = {k: inputs[k][:1, :length] for k in ("attention_mask", "position_ids") if inputs.get(k) is not None}
    rest = {k: (v[:, length:] if k in ("input_ids", "labels", "position_ids") else v) for k, v in inputs.items()}
    rest["past_key_values"] = prefix_cache(model, ids[:1, :length], ids.size(0), **first)
    return rest, length
