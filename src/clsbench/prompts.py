"""Prompts and answers of the instruction approach (the paper's Appendix B), and the parsers that
map a generated answer back to labels. Pure functions: no model, no tokenizer.

Single-label (B.1): labels get identifiers A, B, ..., Z, AA, AB, ... shown as a space-separated
choice set ``A:business B:sport``; the answer is ``<ID>\\t<LABEL_NAME>``.
Multi-label (B.2): the allowed set is shown joined by ``delimiter`` (default ``", "``); the answer
is a JSON list after ``labels:``, in the allowed set's order (``[]`` when no label applies).

The paper's text (as extracted) lost the templates' line breaks; they are put back at the
sentence boundaries below. A prompt is (instruction, text, tail) so the caller can truncate the
text, and only the text, to fit a token budget.
"""
from __future__ import annotations

import json
import re
import string

from . import UserError

SINGLE_INSTRUCTION = ("You are a classifier. Choose exactly one label from the set below.\n"
                      "Choices: {choices}\n"
                      "Output format: <ID>\\t<LABEL_NAME>\n"
                      "Do not add anything else.\n"
                      "TEXT: ")
SINGLE_TAIL = "\nANSWER:"
MULTI_INSTRUCTION = ("You are a careful multi-label classifier. Choose zero or more labels from this allowed set: "
                     "{allowed}\n"
                     'Return STRICTLY a JSON list under the key "labels" and nothing else, e.g.: '
                     'labels: ["{first}"] or labels: []\n'
                     "text: ")
MULTI_TAIL = "\nlabels:"
DEFAULT_DELIMITER = ", "


def label_ids(n: int) -> list[str]:
    """A..Z, then AA, AB, ..., AZ, BA, ... (spreadsheet columns), as many as there are labels."""
    out = []
    for i in range(n):
        ident, i = "", i + 1
        while i:
            i, rem = divmod(i - 1, 26)
            ident = string.ascii_uppercase[rem] + ident
        out.append(ident)
    return out


def check_labels(labels: list[str], multi_label: bool, delimiter: str = DEFAULT_DELIMITER) -> None:
    """Label names a prompt can carry unambiguously; raises UserError naming the label."""
    if not labels:
        raise UserError("the dataset has no labels")
    for name in labels:
        if not name.strip():
            raise UserError("a label name is empty")
        if "\t" in name or "\n" in name or "\r" in name:
            raise UserError(f"label {name!r} contains a tab or line break, which the answer format "
                            "<ID>\\t<LABEL_NAME> / the allowed set cannot carry; rename it")
        if multi_label and delimiter.strip() and delimiter.strip() in name:
            raise UserError(f"label {name!r} contains the allowed-set delimiter {delimiter!r}; set another "
                            "'label_delimiter' (e.g. '; ' or ' | ') in the approach's hparams")
    folded = [name.strip().casefold() for name in labels]
    if len(set(folded)) < len(folded):
        raise UserError(f"label names differ only in case or spacing, so answers cannot be told apart: {labels}")


def instruction(labels: list[str], multi_label: bool, delimiter: str = DEFAULT_DELIMITER) -> str:
    """Everything of the prompt before the text."""
    if multi_label:
        return MULTI_INSTRUCTION.format(allowed=delimiter.join(labels), first=labels[0])
    choices = " ".join(f"{ident}:{name}" for ident, name in zip(label_ids(len(labels)), labels))
    return SINGLE_INSTRUCTION.format(choices=choices)


def tail(multi_label: bool) -> str:
    """Everything of the prompt after the text: ends with ``ANSWER:`` / ``labels:``."""
    return MULTI_TAIL if multi_label else SINGLE_TAIL


def render(text: str, labels: list[str], multi_label: bool, delimiter: str = DEFAULT_DELIMITER) -> str:
    """The test prompt (Appendix B.1.2 / B.2.2); the training prompt is this plus :func:`answer`."""
    return instruction(labels, multi_label, delimiter) + text + tail(multi_label)


def examples_block(examples: list[tuple[str, list[str]]], labels: list[str], multi_label: bool) -> str:
    """Few-shot: solved examples placed after the instruction (which ends by opening the text), each
    its text, the tail and its answer, then a blank line and the instruction's opening again
    (``TEXT: `` / ``text: ``) for the next text."""
    opening = (MULTI_INSTRUCTION if multi_label else SINGLE_INSTRUCTION).rsplit("\n", 1)[1]
    return "".join(text + tail(multi_label) + answer(gold, labels, multi_label) + "\n\n" + opening
                   for text, gold in examples)


def answer(gold: list[str], labels: list[str], multi_label: bool) -> str:
    """The completion after the prompt: `` B\\tsport`` or `` ["business", "tech"]`` (allowed-set order)."""
    unknown = [g for g in gold if g not in labels]
    if unknown:
        raise UserError(f"gold labels {unknown} are not among the dataset's labels {labels}")
    if multi_label:
        return " " + json.dumps([name for name in labels if name in gold], ensure_ascii=False)
    if len(gold) != 1:
        raise UserError(f"a single-label answer needs exactly one gold label, got {gold}")
    index = labels.index(gold[0])
    return f" {label_ids(len(labels))[index]}\t{labels[index]}"


def _fold(s: str) -> str:
    return " ".join(s.split()).casefold()


def parse_single(output: str, labels: list[str]) -> int | None:
    """Index of the label a generated single-label answer names, or None (invalid).

    Accepts the exact ``<ID>\\t<LABEL_NAME>``, the ID alone, the label name alone, ID and name
    with another separator (``A: sport``, ``A sport``, ``A) sport``), any case and spacing, and
    trailing lines (only the first non-empty line counts). ID and name naming different labels is
    invalid; a valid ID beside a misspelt name counts as the ID (the format's primary answer).
    """
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = _fold(lines[0].replace("\t", " "))
    names = {_fold(name): i for i, name in enumerate(labels)}
    ids = {ident.casefold(): i for i, ident in enumerate(label_ids(len(labels)))}
    if line in names:
        return names[line]
    match = re.fullmatch(r"([a-z]{1,3})\s*[:.)\-]?\s*(.*)", line)
    if not match:
        return None
    by_id = ids.get(match[1])
    rest = match[2].strip(" .\"'")
    by_name = names.get(rest) if rest else None
    if by_id is not None and by_name is not None and by_id != by_name:
        return None
    return by_id if by_id is not None else by_name


def parse_multi(output: str, labels: list[str]) -> list[str] | None:
    """Labels a generated multi-label answer names (allowed-set order), or None (invalid).

    Accepts the JSON list with or without the ``labels:`` key, extra text around it, single
    quotes, any case and spacing of names, and a list cut off by the token limit (the complete
    names in it count). A name outside the allowed set makes the whole answer invalid (a model
    that answers with an unknown label is wrong, not partly right); ``[]`` is a valid empty answer.
    Without any list, a delimiter-separated line counts only if all its parts are allowed labels.
    """
    folded = {_fold(name): name for name in labels}
    start = output.find("[")
    if start >= 0:
        end = output.find("]", start)
        body = output[start + 1:] if end < 0 else output[start + 1:end]
        found = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'', body)
        names = []
        for double, single in found:
            try:
                names.append(json.loads(f'"{double}"') if double else single)
            except json.JSONDecodeError:
                names.append(double)
        if not found and body.strip() and end >= 0:
            names = [part.strip() for part in body.split(",")]  # [business, sport] without quotes
        if any(_fold(n) not in folded for n in names):
            return None
        chosen = {folded[_fold(n)] for n in names}
        return [name for name in labels if name in chosen]
    text = output.strip().removeprefix("labels:").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    parts = [_fold(p) for p in re.split(r"[,;|]", lines[0]) if p.strip()]
    if parts and all(p in folded for p in parts):
        chosen = {folded[p] for p in parts}
        return [name for name in labels if name in chosen]
    return None
