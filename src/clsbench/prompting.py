"""The prompt codec of the instruct approaches: token ids of Appendix B's prompts and answers for one
dataset and tokenizer (:class:`Encoder`, the same for training and inference), and the solved
examples a few-shot prompt shows (:func:`few_shot_examples`). The words themselves: :mod:`clsbench.prompts`.

A prompt carries at most ``text_tokens`` tokens of the text (the hyperparameter, the same budget
as the other approaches' ``max_length``); its total length is derived (instruction with the
allowed labels + text + longest answer), so more labels never shorten the text.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import UserError, prompts
from .hparams import REQUIRED, param
from .runtime import InferenceHparams, QuantHparams

MAX_LABEL_SETS = 64  # multi-label: candidate label sets scored whole for marginal label probabilities


@dataclass(frozen=True)
class PromptHparams(InferenceHparams, QuantHparams):
    """The prompts and their inference (approach zeroshot; instruct and fewshot add to them)."""
    text_tokens: int = param(REQUIRED, "tokens of the text a prompt carries (the other approaches' max_length); "
                             "the prompt's total length is derived - instruction with the allowed labels + text + "
                             "longest answer", minimum=1)
    chat_template: bool = param(False, "wrap the prompt in the tokenizer's chat template")
    label_delimiter: str = param(prompts.DEFAULT_DELIMITER, "joins the multi-label allowed set", minLength=1)
    threshold: float = param(0.5, "multi-label score mode: probability at which a label is predicted",
                             minimum=0, maximum=1)
    min_labels: int = param(0, "multi-label: at least this many labels per text", ref="min_labels")


class Encoder:
    """Token ids of prompts and answers for one dataset and tokenizer (the same for training and
    inference, so the model sees at test time exactly the prompt it was trained on). ``h``: the
    cell's :class:`PromptHparams` (with ``shot_tokens`` when ``examples`` are given)."""

    def __init__(self, tok, labels: list[str], multi_label: bool, h: PromptHparams, train_labels=None, examples=None):
        self.tok, self.labels, self.multi = tok, labels, multi_label
        self.delimiter = h.label_delimiter
        self.chat = h.chat_template
        self.eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if self.eos is None:
            raise UserError(f"tokenizer {tok.name_or_path} has no eos (or sep) token to end an answer with")
        prompts.check_labels(labels, multi_label, self.delimiter)
        self.head = prompts.instruction(labels, multi_label, self.delimiter)
        if examples:  # few-shot: solved examples, each cut to shot_tokens, between instruction and text
            cut = [(self.tok.decode(self.ids(text)[:h.shot_tokens]), gold) for text, gold in examples]
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
        self.text_budget = h.text_tokens
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
