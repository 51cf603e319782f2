"""Approach "encoder": full fine-tuning of a BERT-style encoder (every parameter trainable), trained
with the HF ``Trainer`` (:func:`clsbench.classifier.fit`). ``adapter/`` holds the whole fine-tuned
model as a plain HF folder (``AutoModelForSequenceClassification.from_pretrained``) with its tokenizer."""
from __future__ import annotations

from . import adapters, classifier, faults
from .io import atomic_path, write_json


def build_model(info: dict, kwargs: dict, hp: dict, env: dict, rank: int):
    """fp32 master weights, unquantised; bf16 autocast through the Trainer where precision is bf16."""
    import torch

    return classifier.load_classifier(info["path"], {**hp, "quantization": "none"}, env, dtype=torch.float32, **kwargs)


def save(model, final, tok, info: dict, kwargs: dict, thresholds: dict | None) -> None:
    with atomic_path(final, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if thresholds:
            write_json(tmp / adapters.THRESHOLDS_FILE, thresholds)
        faults.write_sums(tmp)


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None) -> dict:
    """Train one cell; writes ``adapter/`` (the model), ``train_log.jsonl`` and ``train_info.json``."""
    return classifier.fit("encoder", model_json, data_dir, out_dir, rank, seed, hp, threads, build_model,
                          default_optimizer="adamw_torch", kind="train_full", save=save)
