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

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, faults, prompts, runtime, throughput
from .data import load_prepared
from .faults import resume_point
from .head import ADAPTER_BASE, save_adapter
from .io import atomic_path, read_json, run_cli, sha256, write_json, write_jsonl
from .metrics import decide, indicator
from .models import load_tokenizer, prefixed
from .progress import Progress, trainer_progress

MODES = ("score", "generate")


# ---------------------------------------------------------------- encoding
class Encoder:
    """Token ids of prompts and answers for one dataset and tokenizer (the same for training and
    inference, so the model sees at test time exactly the prompt it was trained on)."""

    def __init__(self, tok, labels: list[str], multi_label: bool, hp: dict, train_labels=None):
        self.tok, self.labels, self.multi = tok, labels, multi_label
        self.delimiter = hp.get("label_delimiter", prompts.DEFAULT_DELIMITER)
        self.chat = hp.get("chat_template", False)
        self.eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if self.eos is None:
            raise UserError(f"tokenizer {tok.name_or_path} has no eos (or sep) token to end an answer with")
        prompts.check_labels(labels, multi_label, self.delimiter)
        self.head = prompts.instruction(labels, multi_label, self.delimiter)
        self.tail = prompts.tail(multi_label)
        # the longest answer to budget for: a multi-label list of the training split's largest label set
        # (with 100 labels, all of them would cost hundreds of tokens no training answer has), else all
        if multi_label:
            sets = {tuple(row) for row in train_labels} if train_labels is not None else {tuple(labels)}
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
    faults.simulate_oom(model)
    return model


def contiguous_lm_head_input(model) -> None:
    """Hand the LM head a contiguous input. transformers slices the positions to project
    (``logits_to_keep=1``: ``hidden[:, -1:, :]``, a strided view) before the LM head, and torch's
    CPU ``linear`` on a strided 3-D input falls back to a batched matmul that copies the whole
    (vocabulary × hidden) weight for every row of the batch. Measured here for Gemma's 262k-token
    vocabulary and a batch of 16: 24.6 s instead of 0.032 s per call in bf16, 0.71 s instead of
    0.20 s in fp32 (the prompt pass of scoring and the prefill of generation each make one)."""
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
    pred = decide(probs, enc.multi, hp.get("threshold", 0.5))
    return float(f1_score(gold, pred, average="micro", zero_division=0))


def _scored_sft_trainer():
    """TRL's SFTTrainer whose evaluation is validation micro-F1 (score mode) instead of the token
    loss, so early stopping and the best epoch restored follow the rule of the head and encoder
    cells (``metric_for_best_model="f1_micro"``, resumable through the trainer state)."""
    from trl import SFTTrainer

    class ScoredSFTTrainer(SFTTrainer):
        def __init__(self, *args, val_f1, **kwargs):
            super().__init__(*args, **kwargs)
            self.val_f1 = val_f1

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
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

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
    steps_per_epoch = math.ceil(len(train_ds) / (hp["batch_size"] * hp["grad_accum"]))
    plan = faults.batch_plan(hp, out_dir, "train")  # smaller micro-batches after an out-of-memory failure
    ckpt = out_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt), per_device_train_batch_size=plan["batch_size"], gradient_accumulation_steps=plan["grad_accum"],
        per_device_eval_batch_size=plan["eval_batch_size"], num_train_epochs=hp["max_epochs"],
        learning_rate=hp["learning_rate"], weight_decay=hp.get("weight_decay", 0.01),
        max_grad_norm=hp.get("max_grad_norm", 0.3), lr_scheduler_type=hp.get("lr_scheduler", "cosine"),
        warmup_steps=hp.get("warmup_ratio", 0.03), optim=optim,
        activation_checkpointing=False,  # set up by peft above (TRL's default would switch it on)
        completion_only_loss=hp.get("loss", "answer_only") == "answer_only", max_length=None,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1_micro", greater_is_better=True,
        logging_strategy="steps", logging_steps=max(1, steps_per_epoch // 5),
        logging_nan_inf_filter=False, seed=seed, data_seed=seed, bf16=env["compute_dtype"] == torch.bfloat16, use_cpu=not env["cuda"],
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, train_sampling_strategy=throughput.sampling_strategy(hp))
    timer = runtime.eval_timer()
    val_rows = [enc.prompt_ids(text) for text in splits["val"]["text"]]
    val_gold = indicator(splits["val"]["labels"], labels)
    trainer = ScoredSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=hp["patience"]), timer, runtime.finite_loss_guard(out_dir),
                   trainer_progress()],
        val_f1=lambda m: val_micro_f1(m, enc, val_rows, val_gold, hp, plan["eval_batch_size"], env["device"]))
    trainer.remove_callback(PrinterCallback)  # trainer_progress prints each log event with step, total, time left
    if env["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    last = resume_point(ckpt, runtime.run_key(model_json, data_dir, "instruct", rank, seed, hp))
    resumed_epochs = round(read_json(Path(last) / "trainer_state.json")["epoch"]) if last else 0
    if last:
        print(f"cell {out_dir}: resuming from {Path(last).name} (epoch {resumed_epochs} done)", flush=True)
    print(f"cell {out_dir}: {faults.describe(plan)}", flush=True)
    t0 = time.perf_counter()
    with faults.oom_retry(out_dir, "train", hp, plan):
        result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - t0
    history = trainer.state.log_history
    runtime.check_finite(history, out_dir)
    epochs_run = round(trainer.state.epoch or 0)
    trained_here = epochs_run - resumed_epochs  # epochs this process trained (throughput)
    train_seconds = wall - timer.eval_seconds
    evals = [h for h in history if "eval_f1_micro" in h]
    best = max(evals, key=lambda h: h["eval_f1_micro"]) if evals else {}
    train_info = {
        "approach": "instruct", "rank": rank, "seed": seed, "trainable_params": int(trainable), "total_params": int(total),
        "epochs_run": epochs_run, "best_epoch": round(best.get("epoch", 0)), "best_val_f1_micro": best.get("eval_f1_micro"),
        "train_wall_seconds": wall, "eval_seconds_during_training": timer.eval_seconds,
        "train_loss": result.training_loss, "n_train": len(train_ds), "n_val": len(val_ds),
        "micro_batch": plan["batch_size"], "grad_accum": plan["grad_accum"],
        "effective_batch": plan["batch_size"] * plan["grad_accum"],
        "resumed_from": Path(last).name if last else None, "loss": hp.get("loss", "answer_only"), "optimizer": optim, "gradient_checkpointing": checkpointing,
        "mean_prompt_tokens": float(np.mean([sum(1 - m for m in mask) for mask in train_ds["completion_mask"]])),
        "device": env["device_name"], "dtype": str(env["compute_dtype"]).replace("torch.", ""),
        "quantization": hp.get("quantization", "nf4"), "peak_memory_mb": runtime.peak_memory_mb(env),
        "prompt_max_length": enc.max_length, **prefixed("train_", enc.coverage(splits["train"]["text"])),
    }
    # samples/s, tokens/s (prompt + answer), padding, peak memory, model FLOPs / MFU (clsbench.throughput)
    train_info.update(throughput.write_train(
        out_dir, lengths=[len(ids) for ids in train_ds["input_ids"]], seconds=train_seconds, epochs=trained_here,
        plan=plan, hp=hp, env=env, peak_memory_mb=train_info["peak_memory_mb"], config=model.config,
        kind="train_frozen", seed=seed))
    write_jsonl(out_dir / "train_log.jsonl", history)
    write_json(out_dir / "train_info.json", train_info)
    save_adapter(trainer.model, out_dir / "adapter", info, None, multi, tok.pad_token_id)
    shutil.rmtree(ckpt, ignore_errors=True)
    return train_info


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
    from peft import PeftModel

    source = Path(source)
    if (source / "adapter_config.json").exists():
        base = source / ADAPTER_BASE
        model = PeftModel.from_pretrained(load_lm(base, hp, env), str(source))
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
    if enc.multi:
        probs = score_multi(model, enc, rows, threshold, bs, env["device"], progress)
    else:
        probs = score_single(model, enc, rows, bs, env["device"], progress)
    pred = decide(probs, enc.multi, threshold)
    return probs, [list(names[row.astype(bool)]) for row in pred], None


def predict(source: str, data_dir: str, out_dir: str, hp: dict, approach: str = "instruct", split: str = "test",
            threads: int | None = None, modes: tuple[str, ...] = MODES) -> dict:
    """Run each inference mode over ``split``; write its predictions and info (see module docstring).
    ``source``: the cell's ``adapter/`` (instruct) or the model's folder (zero-shot)."""
    import torch

    env = runtime.device_setup(threads, hp.get("precision"))
    splits, labels, multi = load_prepared(data_dir)
    df = splits[split]
    out_dir = Path(out_dir)
    if (Path(source) / "adapter_config.json").exists():  # a corrupted adapter is removed with what came from it
        faults.check_sums(source, derived=tuple(out_dir / f"{stem}{suffix}.{ext}" for suffix in ("", "_generate")
                                                for stem, ext in (("predictions", "parquet"), ("metrics", "json"))))
    model, tok = load_for_inference(source, hp, env)
    enc = Encoder(tok, labels, multi, hp, train_labels=splits["train"]["labels"])
    enc.check_fits(model.config)
    t0 = time.perf_counter()
    rows = [enc.prompt_ids(text) for text in df["text"]]
    encode_seconds = time.perf_counter() - t0
    lengths = [len(r) for r in rows]
    hp = faults.resolve_eval_batch(hp, env, lambda subset, bs: [
        run_mode(m, model, enc, subset, {**hp, "eval_batch_size": bs}, env) for m in modes], rows, lengths)
    plan = faults.batch_plan(hp, out_dir, "predict")  # halved after an out-of-memory failure
    configured, hp = hp, {**hp, "eval_batch_size": plan["eval_batch_size"]}
    infos = {}
    for mode in modes:
        with faults.oom_retry(out_dir, "predict", configured, plan):
            run_mode(mode, model, enc, rows[:hp["eval_batch_size"]], hp, env)  # warm-up, not timed
            if env["cuda"]:
                torch.cuda.reset_peak_memory_stats()
            progress = Progress(f"predict {split} ({mode})", len(rows))
            (probs, pred, texts), wall = runtime.timed(
                lambda mode=mode, progress=progress: run_mode(mode, model, enc, rows, hp, env, progress), env)
        table = pd.DataFrame({"id": df["id"].values, "gold": list(df["labels"]),
                              "probs": [p.astype(np.float32) for p in probs] if probs is not None else None,
                              "pred": [p if p is not None else [] for p in pred]})
        info = {"split": split, "mode": mode, "n": len(df), "infer_wall_seconds": wall,
                "mean_prompt_tokens": sum(lengths) / len(df), "prompt_encode_seconds": encode_seconds,
                "eval_batch_size": hp["eval_batch_size"], "device": env["device_name"],
                "peak_memory_mb": runtime.peak_memory_mb(env), "labels": labels, "multi_label": multi,
                "prompt_max_length": enc.max_length, **enc.coverage(df["text"])}
        rec = throughput.record("infer", lengths=lengths, seconds=wall, batch_size=hp["eval_batch_size"],
                                order="sorted", env=env, peak_memory_mb=info["peak_memory_mb"], config=model.config,
                                kind="forward")
        info.update(rec)  # each mode's info keeps plain infer_ keys; the cell's throughput.json names the mode
        throughput.write(out_dir, throughput.restage(rec, "infer", f"infer_{mode}"))
        if texts is not None:
            table["generated"] = texts
            table["valid"] = [p is not None for p in pred]
            info["invalid_output_rate"] = float(1 - table["valid"].mean())
        suffix = "" if mode == "score" else f"_{mode}"
        with atomic_path(out_dir / f"predictions{suffix}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
            info["predictions_sha256"] = sha256(tmp)  # checked by the evaluate step
        write_json(out_dir / f"predict_info{suffix}.json", info)
        infos[mode] = info
    if approach == "zeroshot":  # no training: record what the evaluation expects of a cell
        trainable, total = runtime.count_parameters(model)
        write_json(out_dir / "train_info.json", {"approach": "zeroshot", "rank": 0, "trainable_params": 0,
                                                 "total_params": int(total), "epochs_run": 0,
                                                 "quantization": hp.get("quantization", "nf4")})
    return infos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Approaches 'instruct' and 'zeroshot': train or predict one cell.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model-json", required=True)
    t.add_argument("--rank", type=int, required=True)
    t.add_argument("--seed", type=int, required=True)
    p = sub.add_parser("predict")
    p.add_argument("--source", required=True, help="the cell's adapter/ (instruct) or model.json (zeroshot)")
    p.add_argument("--approach", choices=("instruct", "zeroshot"), default="instruct")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    for a in (t, p):
        a.add_argument("--data-dir", required=True)
        a.add_argument("--out-dir", required=True)
        a.add_argument("--hparams", required=True, help="the approach's hyperparameters as JSON")
        a.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    hp = json.loads(args.hparams)
    if args.cmd == "train":
        info = train(args.model_json, args.data_dir, args.out_dir, args.rank, args.seed, hp, args.threads)
    else:
        source = read_json(args.source)["path"] if args.source.endswith(".json") else args.source
        info = predict(source, args.data_dir, args.out_dir, hp, args.approach, threads=args.threads,
                       modes=tuple(args.modes))
    print(json.dumps(info, indent=2, default=str))


if __name__ == "__main__":
    run_cli(main)
