"""Label scoring and generation with a causal LM over the prompts of :class:`clsbench.prompting.Encoder`:
the two inference modes of the instruct approaches.

score     no free text. Single-label: one forward pass of the prompt; the next-token scores of the
          answers' first tokens (`` A``, `` B`` ...; checked unique for the tokenizer, else whole
          answers are scored), softmax over them = class probabilities. Multi-label: the JSON list
          is scored label by label in the allowed set's order (the order it is trained in): label
          i's probability is P(next list item is label i | decisions on labels before it), the
          model's probability mass of continuing the list with label i against continuing it with
          a later label or closing it, with the prompt's KV cache reused; every event scored is a
          token sequence of a tokenised training target (:meth:`Encoder.next_item_events`).
          Where the label sets the training split has (every set of each size it holds, from its
          labels) number at most ``prompting.MAX_LABEL_SETS``, the probability of label i is instead
          its marginal P(i applies): each candidate list's whole answer (with its end) is scored, the
          scores renormalised over the candidates, and the sets holding i summed: the quantity a
          head's sigmoid estimates, so calibration compares like with like (:func:`label_probability`).
          Threshold 0.5. Invalid answers are impossible; the probabilities feed the calibration report.
generate  greedy decoding of at most as many tokens as the longest answer, parsed by
          :mod:`clsbench.prompts`; an answer naming no allowed label, or any label outside the
          allowed set, is invalid and scored as a wrong answer by the metrics.
"""
from __future__ import annotations

import copy

import numpy as np

from . import prefix, prompts
from .metrics import decide, label_lists
from .prompting import Encoder, PromptHparams

MODES = ("score", "generate")


def _batch(rows: list[list[int]], pad_id: int, device: str):
    """Left-padded batch with explicit positions (each row's tokens keep the positions of training)."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _prompt_inputs(model, rows: list[list[int]], pad_id: int, device: str, whole: bool = False) -> dict:
    """A batch of prompts as model inputs: where the rows share a prefix (the instruction and
    allowed labels), that prefix run once into a KV cache repeated for each row and the rest
    left-padded after it (clsbench.prefix); the attention mask covers prefix and rest. ``whole``:
    the input ids with the prefix too (``generate`` runs only the positions its cache lacks)."""
    import torch

    length = prefix.common_length(rows)
    if length < prefix.MIN_SHARED_TOKENS:
        ids, mask, pos = _batch(rows, pad_id, device)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    shared = torch.tensor([rows[0][:length]], device=device)
    cache = prefix.prefix_cache(model, shared, len(rows))
    ids, mask, pos = _batch([row[length:] for row in rows], pad_id, device)
    mask = torch.cat([torch.ones((len(rows), length), dtype=mask.dtype, device=mask.device), mask], 1)
    if whole:
        ids = torch.cat([shared.expand(len(rows), -1), ids], 1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos + length, "past_key_values": cache}


def first_token_scores(model, prompt_rows: list[list[int]], token_ids: list[int], batch_size: int, pad_id: int,
                       device: str, progress=None) -> np.ndarray:
    """Next-token logits of ``token_ids`` after each prompt (one forward pass per batch)."""
    import torch

    out = np.zeros((len(prompt_rows), len(token_ids)), dtype=np.float64)
    order = np.argsort([len(r) for r in prompt_rows])
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = _prompt_inputs(model, [prompt_rows[i] for i in idx], pad_id, device)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1]
            out[idx] = logits[:, token_ids].float().cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    return out


def prompt_cache(model, rows: list[list[int]], pad_id: int, device: str):
    """One forward pass over a batch of prompts: (KV cache, prompt mask, next-token log-probs)."""
    import torch

    with torch.inference_mode():
        inputs = _prompt_inputs(model, rows, pad_id, device)
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.past_key_values, inputs["attention_mask"], torch.log_softmax(out.logits[:, -1].float(), -1)


def _carriers(flat: list[list[int]], owner: list[int]) -> list[int]:
    """For each continuation, the row whose forward pass scores it: a continuation whose tokens
    but the last are a prefix of another row of the same prompt is read off that row's next-token
    log-probs (multi-label events share all but their last token with the label's "list ends"
    target), so the model runs once per distinct path, not once per continuation."""
    by_prefix, carrier = {}, [0] * len(flat)
    for k in sorted(range(len(flat)), key=lambda k: -len(flat[k])):
        key = (owner[k], tuple(flat[k][:-1]))
        if key in by_prefix:
            carrier[k] = by_prefix[key]
            continue
        carrier[k] = k
        for m in range(len(flat[k]) + 1):
            by_prefix.setdefault((owner[k], tuple(flat[k][:m])), k)
    return carrier


def continuation_logprobs(model, cache, continuations: list[list[list[int]]], device: str,
                          max_elements: int = 2**26, prompts_of: list[int] | None = None) -> list[np.ndarray]:
    """log P(continuation | prompt) for the continuations of each of the cached batch's prompts
    (``prompts_of[k]``: the cache row of ``continuations[k]``, default k; rows may hold different
    numbers of continuations), one array per row; the prompts are not run again (their KV cache
    is reused), and continuations that differ from another only in their last token share its
    pass (:func:`_carriers`)."""
    import torch

    past, prompt_mask, first = cache
    counts = [len(row) for row in continuations]
    flat = [c for row in continuations for c in row]
    rows_of = torch.tensor(prompts_of if prompts_of is not None else range(len(continuations)))
    owner = rows_of.repeat_interleave(torch.tensor(counts))
    scores = first.cpu().double()[owner, torch.tensor([c[0] for c in flat])]
    carrier = _carriers(flat, owner.tolist())
    runs = sorted(set(carrier))  # the rows the model runs on
    width = max(len(flat[k]) for k in runs)
    if width > 1:  # the later tokens, in chunks of rows that keep the logits tensor small
        ids = torch.zeros((len(runs), width), dtype=torch.long)
        mask = torch.zeros((len(runs), width), dtype=torch.long)
        for i, k in enumerate(runs):
            ids[i, :len(flat[k])] = torch.tensor(flat[k])
            mask[i, :len(flat[k])] = 1
        run_owner = owner[runs]
        slot = {k: i for i, k in enumerate(runs)}
        readers = [[] for _ in runs]  # continuations (with more than one token) read off each run row
        for k, c in enumerate(carrier):
            if len(flat[k]) > 1:
                readers[slot[c]].append(k)
        vocab = first.shape[-1]
        chunk = max(1, max_elements // (width * vocab))
        with torch.inference_mode():
            for start in range(0, len(runs), chunk):
                rows = slice(start, start + chunk)
                sub = copy.deepcopy(past)
                sub.batch_select_indices(run_owner[rows].to(prompt_mask.device))
                pmask = prompt_mask[run_owner[rows].to(prompt_mask.device)]
                attn = torch.cat([pmask, mask[rows].to(pmask.device)], 1)
                positions = pmask.sum(1, keepdim=True) + torch.arange(width, device=pmask.device)
                logits = model(input_ids=ids[rows].to(device), attention_mask=attn, position_ids=positions,
                               past_key_values=sub, use_cache=True).logits.float()
                logp = torch.log_softmax(logits, -1)
                # token t of a continuation given the tokens before it: its run row's position t - 1
                picks = [(k, i - start, t - 1, flat[k][t]) for i in range(start, min(start + chunk, len(runs)))
                         for k in readers[i] for t in range(1, len(flat[k]))]
                if picks:
                    k, row, pos, tok = (torch.tensor(col) for col in zip(*picks))
                    scores.index_add_(0, k, logp[row.to(logp.device), pos.to(logp.device), tok.to(logp.device)]
                                      .cpu().double())
    return np.split(scores.numpy(), np.cumsum(counts)[:-1])


def score_single(model, enc: Encoder, prompt_rows: list[list[int]], batch_size: int, device: str,
                 progress=None) -> np.ndarray:
    """Class probabilities: softmax over the answers' first-token scores (whole answers where first tokens collide)."""
    from scipy.special import softmax

    answers = [enc.answer_ids([name]) for name in enc.labels]
    first = [a[0] for a in answers]
    if len(set(first)) == len(first):
        logits = first_token_scores(model, prompt_rows, first, batch_size, enc.tok.pad_token_id, device, progress)
    else:  # e.g. IDs beyond Z whose first token is shared: score every whole answer
        rows = []
        for s in range(0, len(prompt_rows), batch_size):
            batch = prompt_rows[s:s + batch_size]
            rows += continuation_logprobs(model, prompt_cache(model, batch, enc.tok.pad_token_id, device),
                                          [answers] * len(batch), device)
            if progress is not None:
                progress.update(len(batch))
        logits = np.stack(rows)
    return softmax(logits, axis=1)


def score_multi(model, enc: Encoder, prompt_rows: list[list[int]], threshold: float, batch_size: int,
                device: str, progress=None) -> np.ndarray:
    """Per-label probabilities by ordered, constrained scoring of the JSON list (see module docstring).

    The events of one decision are token sequences of :meth:`Encoder.next_item_events`, each a
    prefix of the tokenised training target of some label set, so the model is asked exactly what
    it was trained to emit. Skipping a label leaves the list's tokens unchanged, so the next label's
    probability is the same event scores renormalised over the later labels and closing the list:
    the model runs again only for the texts whose list just grew (about |labels chosen| + 1 passes,
    not one per label)."""
    from scipy.special import logsumexp, softmax

    labels = enc.labels
    probs = np.zeros((len(prompt_rows), len(labels)))
    for s in range(0, len(prompt_rows), batch_size):
        batch = prompt_rows[s:s + batch_size]
        cache = prompt_cache(model, batch, enc.tok.pad_token_id, device)
        chosen = [[] for _ in batch]
        scored = [None] * len(batch)  # (first label index, log-probs of labels[first:] + [close])
        for i in range(len(labels)):
            stale = [b for b in range(len(batch)) if scored[b] is None]
            if stale:
                events = [enc.next_item_events(chosen[b], labels[i:]) for b in stale]
                flat = [[seq for group in groups for seq in group] for groups in events]
                rows = continuation_logprobs(model, cache, flat, device, prompts_of=stale)
                for b, groups, row in zip(stale, events, rows):
                    bounds = np.cumsum([0] + [len(g) for g in groups])
                    scored[b] = (i, np.array([logsumexp(row[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]))
            for b in range(len(batch)):
                first, row = scored[b]
                p_i = softmax(row[i - first:])[0]
                probs[s + b, i] = p_i
                if p_i >= threshold:
                    chosen[b].append(labels[i])
                    scored[b] = None
        if progress is not None:
            progress.update(len(batch))
    return probs


def label_probability(enc: Encoder) -> str | None:
    """What a multi-label score-mode probability is (predict_info's ``label_probability``)."""
    if not enc.multi:
        return None
    if enc.label_sets is not None:
        return f"marginal over {len(enc.label_sets)} label sets"
    return "next list item (ordered scoring)"


def score_marginal(model, enc: Encoder, prompt_rows: list[list[int]], batch_size: int, device: str,
                   progress=None) -> np.ndarray:
    """Marginal label probabilities: every candidate set's whole answer scored once per prompt (KV
    cache reused), renormalised over the candidates, summed over the sets that hold each label."""
    from scipy.special import softmax

    answers = [enc.answer_ids(s) for s in enc.label_sets]
    member = np.array([[name in s for name in enc.labels] for s in enc.label_sets], dtype=np.float64)
    probs = np.zeros((len(prompt_rows), len(enc.labels)))
    for s in range(0, len(prompt_rows), batch_size):
        batch = prompt_rows[s:s + batch_size]
        cache = prompt_cache(model, batch, enc.tok.pad_token_id, device)
        rows = continuation_logprobs(model, cache, [answers] * len(batch), device)
        probs[s:s + len(batch)] = softmax(np.stack(rows), axis=1) @ member
        if progress is not None:
            progress.update(len(batch))
    return probs


def generate(model, enc: Encoder, prompt_rows: list[list[int]], batch_size: int, device: str,
             progress=None) -> list[str]:
    """Greedy answers (at most the longest answer's length), decoded without special tokens."""
    import torch

    out = [""] * len(prompt_rows)
    order = np.argsort([len(r) for r in prompt_rows])
    pad = enc.tok.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = _prompt_inputs(model, [prompt_rows[i] for i in idx], pad, device, whole=True)
            ids = inputs["input_ids"]
            gen = model.generate(input_ids=ids, attention_mask=inputs["attention_mask"],
                                 past_key_values=inputs.get("past_key_values"),
                                 max_new_tokens=enc.answer_budget, do_sample=False, pad_token_id=pad,
                                 eos_token_id=enc.eos, top_p=None, top_k=None, temperature=None)
            for i, row in zip(idx, gen[:, ids.shape[1]:]):
                out[i] = enc.tok.decode(row, skip_special_tokens=True)
            if progress is not None:
                progress.update(len(idx))
    return out


def run_mode(mode: str, model, enc: Encoder, rows: list[list[int]], h: PromptHparams, env: dict, progress=None):
    """(probs or None, predicted label lists, generated texts or None), ``h.eval_batch_size`` texts a batch."""
    bs, threshold = h.eval_batch_size, h.threshold
    if mode == "generate":
        texts = generate(model, enc, rows, bs, env["device"], progress)
        parse = prompts.parse_multi if enc.multi else prompts.parse_single
        parsed = [parse(t, enc.labels) for t in texts]
        if not enc.multi:
            parsed = [None if p is None else [enc.labels[p]] for p in parsed]
        return None, parsed, texts
    if enc.multi and enc.label_sets is not None:
        probs = score_marginal(model, enc, rows, bs, env["device"], progress)
    elif enc.multi:
        probs = score_multi(model, enc, rows, threshold, bs, env["device"], progress)
    else:
        probs = score_single(model, enc, rows, bs, env["device"], progress)
    return probs, label_lists(decide(probs, enc.multi, threshold, h.min_labels), enc.labels), None
