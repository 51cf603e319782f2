"""Approaches that ask a causal LM for the label in words (the paper's Approach 2):

instruct  QLoRA instruction tuning on prompt -> answer pairs (Appendix B prompts, TRL ``SFTTrainer``
          on a prompt/completion dataset, answer-only loss by default).
zeroshot  the same prompts and inference on the untrained model (the paper's "headless prompting").

Inference has two modes, each cached in the cell folder:

score     no free text. Single-label: one forward pass of the prompt; the next-token scores of the
          answers' first tokens (`` A``, `` B`` ...; checked unique for the tokenizer, else whole
          answers are scored), softmax over them = class probabilities. Multi-label: the JSON list
          is scored label by label in the allowed set's order (the order it is trained in): label
          i's probability is P(next list item is label i | decisions on labels before it), the
          model's probability mass of continuing the list with label i against continuing it with
          a later label or closing it, with the prompt's KV cache reused; every event scored is a
          token sequence of a tokenised training target (:meth:`Encoder.next_item_events`).
          Where the label sets the training split has (every set of each size it holds, from its
          labels) number at most ``MAX_LABEL_SETS``, the probability of label i is instead its
          marginal P(i applies): each candidate list's whole answer (with its end) is scored, the
          scores renormalised over the candidates, and the sets holding i summed: the quantity a
          head's sigmoid estimates, so calibration compares like with like. ``predict_info.json``
          records which (``label_probability``).
          Threshold 0.5. Invalid answers are impossible; the probabilities feed the calibration
          report.
          -> ``predictions.parquet`` (id, gold, probs, pred), ``predict_info.json``
generate  greedy decoding of at most as many tokens as the longest answer, parsed by
          :mod:`clsbench.prompts`; an answer naming no allowed label, or any label outside the
          allowed set, is invalid (``valid`` False) and scored as a wrong answer by the metrics.
          -> ``predictions_generate.parquet`` (+ generated, valid), ``predict_info_generate.json``

A prompt carries at most ``text_tokens`` tokens of the text (the hyperparameter, the same budget
as the other approaches' ``max_length``); its total length is derived (instruction with the
allowed labels + text + longest answer), so more labels never shorten the text.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, adapters, batching, faults, prompts, runtime, throughput, training
from .batching import resolve_eval_batch
from .data import load_prepared
from .io import atomic_path, read_json, sha256, split_dir, write_json
from .metrics import decide, indicator
from .models import load_tokenizer, prefixed
from .progress import Progress

MODES = ("score", "generate")
MAX_LABEL_SETS = 64  # multi-label: candidate label sets scored whole for marginal label probabilities


# ---------------------------------------------------------------- encoding
class Encoder:
    """Token ids of prompts and answers for one dataset and tokenizer (the same for training and
    inference, so the model sees at test time exactly the prompt it was trained on)."""

    def __init__(self, tok, labels: list[str], multi_label: bool, hp: dict, train_labels=None, examples=None):
        self.tok, self.labels, self.multi = tok, labels, multi_label
        self.delimiter = hp.get("label_delimiter", prompts.DEFAULT_DELIMITER)
        self.chat = hp.get("chat_template", False)
        self.eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if self.eos is None:
            raise UserError(f"tokenizer {tok.name_or_path} has no eos (or sep) token to end an answer with")
        prompts.check_labels(labels, multi_label, self.delimiter)
        self.head = prompts.instruction(labels, multi_label, self.delimiter)
        if examples:  # few-shot: solved examples, each cut to shot_tokens, between instruction and text
            cut = [(self.tok.decode(self.ids(text)[:hp["shot_tokens"]]), gold) for text, gold in examples]
            self.head += prompts.examples_block(cut, labels, multi_label)
        self.tail = prompts.tail(multi_label)
        # the longest answer to budget for: a multi-label list of the training split's largest label set
        # (with 100 labels, all of them would cost hundreds of tokens no training answer has), else all
        self.label_sets = None  # multi-label: the candidate sets of marginal scoring (None: ordered scoring)
        if multi_label:
            sets = {tuple(row) for row in train_labels} if train_labels is not None else {tuple(labels)}
            sizes = sorted({len(s) for s in sets})
            if sum(math.comb(len(labels), k) for k in sizes) <= MAX_LABEL_SETS:
                self.label_sets = [list(c) for k in sizes for c in itertools.combinations(labels, k)]
            candidates = [prompts.answer(list(s), labels, True) for s in sets]
        else:
            candidates = [prompts.answer([name], labels, False) for name in labels]
        self.answer_budget = max(len(self.ids(a)) for a in candidates) + 1  # + eos; generation's max_new_tokens
        self.instruction_tokens = len(self._encode(""))
        self.text_budget = hp["text_tokens"]
        if not isinstance(self.text_budget, int) or self.text_budget < 1:
            raise UserError(f"hyperparameter text_tokens: {self.text_budget!r} leaves no room for the text; "
                            "give the number of text tokens the prompt carries (e.g. the head's max_length)")
        # derived, so that more labels or a longer instruction never shorten the text
        self.max_length = self.instruction_tokens + self.text_budget + self.answer_budget

    def check_fits(self, config) -> None:
        """Refuse a prompt the model cannot position: instruction + text + answer > its context."""
        limit = getattr(config, "max_position_embeddings", None)
        if limit and self.max_length > limit:
            raise UserError(f"instruction ({self.instruction_tokens} tokens) + text_tokens {self.text_budget} + "
                            f"answer ({self.answer_budget}) = {self.max_length} tokens exceed the model's context of "
                            f"{limit}; lower text_tokens to at most {limit - self.instruction_tokens - self.answer_budget}")

    def ids(self, s: str) -> list[int]:
        return self.tok(s, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> list[int]:
        """Ids of the whole prompt around ``text`` (in the chat template if configured)."""
        prompt = self.head + text + self.tail
        if self.chat:
            prompt = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tok(prompt, add_special_tokens=not self.chat)["input_ids"]

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt's ids with the text cut to ``text_tokens`` (decoded back, re-encoded with the rest)."""
        budget, text_ids = self.text_budget, self.ids(text)
        for _ in range(4):
            cut = text if len(text_ids) <= budget else self.tok.decode(text_ids[:budget])
            ids = self._encode(cut)
            over = len(ids) + self.answer_budget - self.max_length
            if over <= 0:
                return ids
            budget -= over  # re-tokenising merged across the cut: take that many tokens more off
        raise UserError(f"cannot fit a prompt of {self.max_length} tokens around this text")

    def coverage(self, texts) -> dict:
        """How much of each text the prompts carry (see :func:`clsbench.models.text_coverage`)."""
        from .models import coverage_record

        return coverage_record([len(self.ids(t)) for t in texts], self.text_budget)

    def answer_ids(self, gold: list[str]) -> list[int]:
        return self.ids(prompts.answer(gold, self.labels, self.multi)) + [self.eos]

    def next_item_events(self, chosen: list[str], later: list[str]) -> list[list[list[int]]]:
        """Multi-label scoring: the token sequences (from the answer's start) of each way the list
        can go on after the labels ``chosen``: one group per label of ``later`` (the next item is that
        label: the list ends after it, or goes on to any later label), then the group "the list ends
        here". Every sequence is the tokenised training target of a label set, or a prefix of one
        that ends at the first token where going on departs from ending, so the events are
        disjoint and each is what training taught the model to emit (a bare closing quote after a
        label, which no target has, is never scored)."""
        groups = []
        for j, name in enumerate(later):
            ends = self.answer_ids(chosen + [name])
            goes_on = []
            for nxt in later[j + 1:]:
                target = self.answer_ids(chosen + [name, nxt])
                shared = next((k for k, (a, b) in enumerate(zip(ends, target)) if a != b), len(ends) - 1)
                if target[:shared + 1] not in goes_on:
                    goes_on.append(target[:shared + 1])
            groups.append([ends] + goes_on)
        groups.append([self.answer_ids(chosen)])
        return groups

    def training_examples(self, df: pd.DataFrame):
        """A tokenised prompt/completion dataset (input_ids, completion_mask) for SFTTrainer."""
        from datasets import Dataset

        rows = {"input_ids": [], "completion_mask": []}
        for text, gold in zip(df["text"], df["labels"]):
            prompt, completion = self.prompt_ids(text), self.answer_ids(list(gold))
            rows["input_ids"].append(prompt + completion)
            rows["completion_mask"].append([0] * len(prompt) + [1] * len(completion))
        return Dataset.from_dict(rows)


# ---------------------------------------------------------------- model
def load_lm(path: str | Path, hp: dict, env: dict):
    """The causal LM, 4-bit NF4 (lm_head kept in full precision) unless ``quantization: none``."""
    from transformers import AutoModelForCausalLM

    quant = runtime.quantization_config(hp, env["compute_dtype"], keep=("lm_head",))
    kwargs = {"dtype": env["compute_dtype"]}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": 0} if env["cuda"] else {"": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if quant is None:
        model.to(env["device"])
    contiguous_lm_head_input(model)
    batching.simulate_oom(model)
    return model


def contiguous_lm_head_input(model) -> None:
    """Hand the LM head a contiguous input. transformers slices the positions to project
    (``logits_to_keep=1``: ``hidden[:, -1:, :]``, a strided view) before the LM head, and torch's
    CPU ``linear`` on a strided 3-D input falls back to a batched matmul that copies the whole
    (vocabulary × hidden) weight for every row of the batch: with Gemma's 262k-token vocabulary
    that dominates the prompt pass of scoring and the prefill of generation (docs/throughput.md
    has the measured figures)."""
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def _score_answer_positions_only() -> None:
    """TRL's fused LM head projects only the positions that carry a loss when Triton is at hand;
    elsewhere it projects every position (to keep tile shapes fixed for compiling backends such as
    Neuron). On a CPU that makes the LM head of a 262k-token vocabulary (Gemma) cost several times
    the rest of the step, for positions whose loss is masked anyway. Same loss, same gradients."""
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def val_micro_f1(model, enc: Encoder, rows: list[list[int]], gold: np.ndarray, hp: dict, batch_size: int,
                 device: str) -> float:
    """Validation micro-F1 of the model being trained, in score mode (no free text: the same
    decision rule as the test predictions, and no invalid answers to tell apart from learning)."""
    from sklearn.metrics import f1_score

    was_training = model.training
    model.eval()
    try:
        probs, _, _ = run_mode("score", model, enc, rows, {**hp, "eval_batch_size": batch_size}, {"device": device})
    finally:
        model.train(was_training)
    pred = decide(probs, enc.multi, hp.get("threshold", 0.5), hp.get("min_labels", 0))
    return float(f1_score(gold, pred, average="micro", zero_division=0))


def _scored_sft_trainer():
    """TRL's SFTTrainer whose evaluation is validation micro-F1 (score mode) instead of the token
    loss, so early stopping and the best epoch restored follow the rule of the head and encoder
    cells (``metric_for_best_model="f1_micro"``, resumable through the trainer state).

    It also keeps the trained LoRA weights in float32, as the head cells keep theirs: SFTTrainer
    casts a quantised model's trainable weights to bf16 whatever precision is asked, so an fp32
    cell trained bf16 adapters with bf16 matmuls (emulated, several times slower, on CPUs without
    AVX512-BF16) and bf16 optimizer updates, unlike every other approach."""
    import torch
    from trl import SFTTrainer

    class ScoredSFTTrainer(SFTTrainer):
        def __init__(self, *args, val_f1, **kwargs):
            super().__init__(*args, **kwargs)
            self.val_f1 = val_f1
            for param in self.model.parameters():
                if param.requires_grad and param.dtype != torch.float32:
                    param.data = param.data.float()

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            t0 = time.perf_counter()
            metrics = {f"{metric_key_prefix}_f1_micro": self.val_f1(self.model),
                       f"{metric_key_prefix}_runtime": time.perf_counter() - t0}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return ScoredSFTTrainer


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None) -> dict:
    """Instruction-tune one cell; writes ``adapter/``, ``train_log.jsonl``, ``train_info.json``."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed
    from trl import SFTConfig

    hp = {"max_grad_norm": 0.3, **hp}  # Table 1's, where a caller gives none
    ScoredSFTTrainer = _scored_sft_trainer()
    env = runtime.device_setup(threads, hp.get("precision"))
    if not env["cuda"]:
        _score_answer_positions_only()
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    tok.padding_side = "right"
    enc = Encoder(tok, labels, multi, hp, train_labels=splits["train"]["labels"])
    set_seed(seed)
    model = load_lm(info["path"], hp, env)
    enc.check_fits(model.config)
    checkpointing = hp.get("gradient_checkpointing", True)
    if hp.get("quantization", "nf4") != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                      bias=hp.get("lora_bias", "none"), target_modules=hp.get("target_modules", "all-linear"))
    model = get_peft_model(model, lora)  # "all-linear" excludes lm_head
    trainable, total = runtime.count_parameters(model)
    train_ds, val_ds = enc.training_examples(splits["train"]), enc.training_examples(splits["val"])

    optim = runtime.optimizer_name(hp, env, "paged_adamw_32bit")
    plan = training.plan(hp, out_dir)
    args = SFTConfig(
        **training.arguments(hp, plan, env, seed, out_dir, len(train_ds)),
        learning_rate=hp["learning_rate"], weight_decay=hp.get("weight_decay", 0.01),
        lr_scheduler_type=hp.get("lr_scheduler", "cosine"), warmup_steps=hp.get("warmup_ratio", 0.03), optim=optim,
        activation_checkpointing=False,  # set up by peft above (TRL's default would switch it on)
        completion_only_loss=hp.get("loss", "answer_only") == "answer_only", max_length=None)
    timer = runtime.eval_timer()
    val_rows = [enc.prompt_ids(text) for text in splits["val"]["text"]]
    val_gold = indicator(splits["val"]["labels"], labels)
    trainer = ScoredSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
        callbacks=training.callbacks(hp, out_dir, timer),
        val_f1=lambda m: val_micro_f1(m, enc, val_rows, val_gold, hp, plan["eval_batch_size"], env["device"]))
    trained_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in trainer.model.parameters() if p.requires_grad})
    key = runtime.run_key(model_json, data_dir, "instruct", rank, seed, hp)
    train_info = {"approach": "instruct", "rank": rank, "seed": seed, "trainable_params": int(trainable),
                  "total_params": int(total), **training.run(trainer, out_dir, plan, hp, env, key, timer)}
    train_info.update({
        "lora_alpha": hp["lora_alpha"], "lora_scale": hp["lora_alpha"] / rank,
        "loss": hp.get("loss", "answer_only"), "optimizer": optim, "trained_dtype": ",".join(trained_dtypes), "gradient_checkpointing": checkpointing,
        "mean_prompt_tokens": float(np.mean([sum(1 - m for m in mask) for mask in train_ds["completion_mask"]])),
        "quantization": hp.get("quantization", "nf4"), "prompt_max_length": enc.max_length,
        **prefixed("train_", enc.coverage(splits["train"]["text"]))})
    return training.finish(out_dir, train_info, trainer, hp, env, plan, seed, "train_lora",
                           lambda final: adapters.save_adapter(trainer.model, final, info))


# ---------------------------------------------------------------- inference
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


def first_token_scores(model, prompt_rows: list[list[int]], token_ids: list[int], batch_size: int, pad_id: int,
                       device: str, progress=None) -> np.ndarray:
    """Next-token logits of ``token_ids`` after each prompt (one forward pass per batch)."""
    import torch

    out = np.zeros((len(prompt_rows), len(token_ids)), dtype=np.float64)
    order = np.argsort([len(r) for r in prompt_rows])
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, pos = _batch([prompt_rows[i] for i in idx], pad_id, device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            out[idx] = logits[:, token_ids].float().cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    return out


def prompt_cache(model, rows: list[list[int]], pad_id: int, device: str):
    """One forward pass over a batch of prompts: (KV cache, prompt mask, next-token log-probs)."""
    import torch

    ids, mask, pos = _batch(rows, pad_id, device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return out.past_key_values, mask, torch.log_softmax(out.logits[:, -1].float(), -1)


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
            ids, mask, _ = _batch([prompt_rows[i] for i in idx], pad, device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=enc.answer_budget, do_sample=False,
                                 pad_token_id=pad, eos_token_id=enc.eos, top_p=None, top_k=None,
                                 temperature=None)
            for i, row in zip(idx, gen[:, ids.shape[1]:]):
                out[i] = enc.tok.decode(row, skip_special_tokens=True)
            if progress is not None:
                progress.update(len(idx))
    return out


def load_for_inference(source: str | Path, hp: dict, env: dict):
    """(model, tokenizer): an instruct cell's ``adapter/`` on its 4-bit base, or a base model (zero-shot)."""

    source = Path(source)
    if adapters.is_peft(source):
        base = source / adapters.ADAPTER_BASE
        model = adapters.load_peft(source, lambda path: load_lm(path, hp, env))
    else:
        base = source
        model = load_lm(base, hp, env)
    tok = load_tokenizer(base)
    tok.padding_side = "left"
    return model.eval(), tok


def run_mode(mode: str, model, enc: Encoder, rows: list[list[int]], hp: dict, env: dict, progress=None):
    """(probs or None, predicted label lists, generated texts or None)."""
    bs, threshold = hp["eval_batch_size"], hp.get("threshold", 0.5)
    names = np.array(enc.labels)
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
    pred = decide(probs, enc.multi, threshold, hp.get("min_labels", 0))
    return probs, [list(names[row.astype(bool)]) for row in pred], None


def predict(source: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
            splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES, untrained: dict | None = None,
            examples=None) -> dict:
    """Run the inference modes over each split with one model load; write each split's predictions
    and info (see module docstring) into :func:`clsbench.io.split_dir`. The test split gets every
    mode of ``modes``, another split (validation, what best.json is chosen on) the first only.
    ``source``: the cell's ``adapter/`` (instruct) or the model's folder (prompting an untrained
    model: ``untrained`` is then the cell's train_info.json record, written here as the cell has no
    training step); ``examples``: solved (text, labels) pairs shown before each text (few-shot).
    Returns the first split's infos by mode."""
    import torch

    env = runtime.device_setup(threads, hp.get("precision"))
    loaded, labels, multi = load_prepared(data_dir)
    out_dir = Path(out_dir)
    if adapters.is_peft(source):  # a corrupted adapter is removed with what came from it
        faults.check_sums(source, derived=tuple(split_dir(out_dir, s) / f"{stem}{suffix}.{ext}" for s in splits
                                                for suffix in ("", "_generate")
                                                for stem, ext in (("predictions", "parquet"), ("metrics", "json"))))
    model, tok = load_for_inference(source, hp, env)
    enc = Encoder(tok, labels, multi, hp, train_labels=loaded["train"]["labels"], examples=examples)
    enc.check_fits(model.config)
    rows, encode_seconds = {}, {}
    for split in splits:
        t0 = time.perf_counter()
        rows[split] = [enc.prompt_ids(text) for text in loaded[split]["text"]]
        encode_seconds[split] = time.perf_counter() - t0
    modes_of = {split: modes if split == "test" else modes[:1] for split in splits}
    first = rows[splits[0]]
    configured = resolve_eval_batch(hp, env, lambda subset, bs: [
        run_mode(m, model, enc, subset, {**hp, "eval_batch_size": bs}, env) for m in modes_of[splits[0]]],
        first, [len(r) for r in first])
    plan = batching.batch_plan(configured, out_dir, "predict")  # halved after an out-of-memory failure
    hp = {**configured, "eval_batch_size": plan["eval_batch_size"]}
    warm, by_split = set(), {}
    for split in splits:
        df, split_rows = loaded[split], rows[split]
        lengths = [len(r) for r in split_rows]
        infos = by_split[split] = {}
        for mode in modes_of[split]:
            with batching.oom_retry(out_dir, "predict", configured, plan):
                if mode not in warm:  # warm-up, not timed: once per mode and job
                    run_mode(mode, model, enc, split_rows[:hp["eval_batch_size"]], hp, env)
                    warm.add(mode)
                if env["cuda"]:
                    torch.cuda.reset_peak_memory_stats()
                progress = Progress(f"predict {split} ({mode})", len(split_rows))
                (probs, pred, texts), wall = runtime.timed(
                    lambda mode=mode, progress=progress, split_rows=split_rows: run_mode(
                        mode, model, enc, split_rows, hp, env, progress), env)
            peak = runtime.peak_memory_mb(env)
            infos[mode] = write_mode(split_dir(out_dir, split), mode, df, probs, pred, texts, {
                "split": split, "mode": mode, "n": len(df), "infer_wall_seconds": wall,
                "mean_prompt_tokens": sum(lengths) / len(df), "prompt_encode_seconds": encode_seconds[split],
                "eval_batch_size": hp["eval_batch_size"], "device": env["device_name"],
                "peak_memory_mb": peak, "labels": labels, "multi_label": multi,
                **({"label_probability": label_probability(enc)} if multi and mode == "score" else {}),
                "prompt_max_length": enc.max_length, **enc.coverage(df["text"])},
                throughput.record("infer", lengths=lengths, seconds=wall, batch_size=hp["eval_batch_size"],
                                  order="sorted", env=env, peak_memory_mb=peak, config=model.config, kind="forward"))
    if untrained is not None and "test" in splits:  # no training step: record what the evaluation expects of a cell
        trainable, total = runtime.count_parameters(model)
        write_json(out_dir / "train_info.json", {**untrained, "rank": 0, "trainable_params": 0, "total_params": int(total),
                                                 "epochs_run": 0, "quantization": hp.get("quantization", "nf4"),
                                                 "prompt_max_length": enc.max_length})
    return by_split[splits[0]]


def write_mode(out: Path, mode: str, df: pd.DataFrame, probs, pred, texts, info: dict, rec: dict) -> dict:
    """predictions[_<mode>].parquet and predict_info[_<mode>].json of one mode (score has no suffix),
    with its throughput record (each mode's info keeps plain infer_ keys; the throughput.json of the
    split's folder names the mode)."""
    table = pd.DataFrame({"id": df["id"].values, "gold": list(df["labels"]),
                          "probs": [p.astype(np.float32) for p in probs] if probs is not None else None,
                          "pred": [p if p is not None else [] for p in pred]})
    info.update(rec)
    throughput.write(out, throughput.restage(rec, "infer", f"infer_{mode}"))
    if texts is not None:
        table["generated"] = texts
        table["valid"] = [p is not None for p in pred]
        info["invalid_output_rate"] = float(1 - table["valid"].mean())
    suffix = "" if mode == "score" else f"_{mode}"
    with atomic_path(out / f"predictions{suffix}.parquet") as tmp:
        table.to_parquet(tmp, index=False)
        info["predictions_sha256"] = sha256(tmp)  # checked by the evaluate step
    write_json(out / f"predict_info{suffix}.json", info)
    return info


def predict_zeroshot(model_dir: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
                     splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES) -> dict:
    """Approach "zeroshot": the instruct prompts on the untrained model (the paper's headless prompting)."""
    return predict(model_dir, data_dir, out_dir, hp, threads, splits, modes, untrained={"approach": "zeroshot"})


def predict_fewshot(model_dir: str, data_dir: str, out_dir: str, hp: dict, seed: int, threads: int | None = None,
                    splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES) -> dict:
    """Approach "fewshot": the instruct prompts with ``shots`` solved training examples per label
    (drawn with ``seed``, :func:`few_shot_examples`) before the text, on the untrained model."""
    loaded, labels, _ = load_prepared(data_dir)
    examples = few_shot_examples(loaded["train"], labels, hp["shots"], seed)
    short = few_shot_shortfall(examples, labels, hp["shots"])
    if short:
        print(f"cell {out_dir}: NOTICE: shots {hp['shots']} per label, but the training split has fewer examples of "
              f"{short}; the prompt shows {len(examples)} examples in all (lower shots, or add examples)", flush=True)
    record = {"approach": "fewshot", "seed": seed, "shots": hp["shots"], "examples": len(examples),
              "example_ids": [ident for ident, _, _ in examples], "labels_short_of_shots": short}
    return predict(model_dir, data_dir, out_dir, hp, threads, splits, modes, untrained=record,
                   examples=[(text, gold) for _, text, gold in examples])


def few_shot_examples(train: pd.DataFrame, labels: list[str], shots: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """(id, text, labels) of ``shots`` training examples per label: for each label in turn, examples
    that carry it and are not taken yet, drawn at random with ``seed`` (fewer where the training split
    has fewer); then shuffled, so that no label's examples always stand next to the text."""
    rng = np.random.default_rng(seed)
    taken: list[int] = []
    for name in labels:
        pool = [i for i, gold in enumerate(train["labels"]) if name in gold and i not in taken]
        taken += [pool[i] for i in sorted(rng.choice(len(pool), size=min(shots, len(pool)), replace=False))]
    rng.shuffle(taken)
    return [(train["id"].iloc[i], train["text"].iloc[i], list(train["labels"].iloc[i])) for i in taken]


def few_shot_shortfall(examples: list[tuple[str, str, list[str]]], labels: list[str], shots: int) -> str:
    """"'sport' (1 of 3), ..." for the labels that got fewer than ``shots`` examples, or ""."""
    counts = {name: sum(name in gold for _, _, gold in examples) for name in labels}
    return ", ".join(f"{name!r} ({n} of {shots})" for name, n in counts.items() if n < shots)
