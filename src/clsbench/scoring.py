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


def _token_tree(continuations: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The continuations of one prompt as a token tree: (token of each node, its parent node, -1 for
    the prompt; the nodes of each continuation). Continuations that begin alike share those nodes,
    as the answers of multi-label scoring do (every list opens the same way, and a list's "ends" and
    "goes on" events differ in their last token only), so each distinct beginning is run once."""
    tokens, parents, paths, node_of = [], [], [], {}
    for cont in continuations:
        path, parent = [], -1
        for token in cont:
            if (parent, token) not in node_of:
                node_of[parent, token] = len(tokens)
                tokens.append(token)
                parents.append(parent)
            parent = node_of[parent, token]
            path.append(parent)
        paths.append(path)
    return tokens, parents, paths


def _tree_mask(parents: list[int], runs: list[int], width: int):
    """Which run node (a node with children) each run node attends to: itself and its ancestors, all
    runs too; ``width`` columns (padding columns attended by no real node, padding rows by themselves)."""
    import torch

    slot = {n: i for i, n in enumerate(runs)}
    mask = torch.eye(width, dtype=torch.bool)
    for i, node in enumerate(runs):
        up = parents[node]
        while up >= 0:
            mask[i, slot[up]] = True
            up = parents[up]
    return mask


def _tree_inputs(trees: list, runs: list[list[int]], width: int):
    """Token ids, depths and ancestor masks (:func:`_tree_mask`) of the inner nodes of ``trees``, one
    row per tree, padded to ``width`` nodes."""
    import torch

    ids = torch.zeros((len(trees), width), dtype=torch.long)
    tree = torch.zeros((len(trees), width, width), dtype=torch.bool)
    for i, ((tokens, parents, _), run) in enumerate(zip(trees, runs)):
        ids[i, :len(run)] = torch.tensor([tokens[n] for n in run])
        tree[i] = _tree_mask(parents, run, width)
    return ids, tree.sum(2) - 1, tree


def continuation_logprobs(model, cache, continuations: list[list[list[int]]], device: str,
                          max_elements: int = 2**26, prompts_of: list[int] | None = None) -> list[np.ndarray]:
    """log P(continuation | prompt) for the continuations of each of the cached batch's prompts
    (``prompts_of[k]``: the cache row of ``continuations[k]``, default k; rows may hold different
    numbers of continuations), one array per row. The prompts are not run again (their KV cache is
    reused), and each row's continuations run as one sequence of their token tree's inner nodes
    (:func:`_token_tree`), each node attending to the prompt and its own ancestors (a 4D mask,
    positions by depth): a node shared by several continuations runs once, and a last token is
    read off its parent's next-token scores without running. Rows go in chunks that keep the
    logits at most ``max_elements``."""
    import torch

    past, prompt_mask, first = cache
    cache_rows = list(prompts_of) if prompts_of is not None else list(range(len(continuations)))
    trees = [_token_tree(row) for row in continuations]
    firsts = first.float().cpu()
    scores = [np.zeros(len(row)) for row in continuations]
    runs = [sorted(set(parents) - {-1}) for _, parents, _ in trees]  # the inner nodes, in order
    for k, ((tokens, _, paths), owner) in enumerate(zip(trees, cache_rows)):  # the first tokens
        for c, path in enumerate(paths):
            scores[k][c] = firsts[owner, tokens[path[0]]].item()
    width = max(map(len, runs), default=0)
    if width == 0:  # single-token continuations only
        return scores
    vocab = first.shape[-1]
    chunk = max(1, max_elements // (width * vocab))
    sdpa_mask = model.config._attn_implementation != "eager"  # a boolean mask; eager adds a float one
    with torch.inference_mode():
        for start in range(0, len(continuations), chunk):
            rows = list(range(start, min(start + chunk, len(continuations))))
            owners = torch.tensor([cache_rows[k] for k in rows], device=prompt_mask.device)
            sub = copy.deepcopy(past)
            sub.batch_select_indices(owners)
            pmask = prompt_mask[owners].bool()
            ids, depth, tree = _tree_inputs([trees[k] for k in rows], [runs[k] for k in rows], width)
            attend = torch.cat([pmask[:, None].expand(-1, width, -1), tree.to(pmask.device)], 2)[:, None]
            if not sdpa_mask:
                attend = torch.zeros(attend.shape, dtype=model.dtype, device=attend.device).masked_fill(
                    ~attend, torch.finfo(model.dtype).min)
            positions = pmask.sum(1, keepdim=True) + depth.to(pmask.device)
            logits = model(input_ids=ids.to(device), attention_mask=attend.to(device), position_ids=positions,
                           past_key_values=sub, use_cache=True).logits.float()
            norm = torch.logsumexp(logits, -1)
            for i, k in enumerate(rows):  # token t of a continuation given the tokens before it: its parent's scores
                tokens, parents, paths = trees[k]
                slot = {n: j for j, n in enumerate(runs[k])}
                picks = [(c, slot[parents[n]], tokens[n]) for c, path in enumerate(paths) for n in path[1:]]
                if picks:
                    c, pos, tok = (torch.tensor(col, device=logits.device) for col in zip(*picks))
                    logp = (logits[i, pos, tok] - norm[i, pos]).double().cpu().numpy()
                    np.add.at(scores[k], c.cpu().numpy(), logp)
    return scores


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
