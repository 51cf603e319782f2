"""Approach "encoder": full fine-tuning of a BERT-style encoder (every parameter trainable), trained
with the HF ``Trainer`` (:func:`clsbench.classifier.fit`). ``adapter/`` holds the whole fine-tuned
model as a plain HF folder (``AutoModelForSequenceClassification.from_pretrained``) with its tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

from . import adapters, classifier, faults
from .hparams import REQUIRED, redefault, typed
from .io import atomic_path, write_json
from .training import TrainerHparams

WHERE = "approaches.encoder.hparams"


@dataclass(frozen=True)
class EncoderHparams(classifier.ClassifierHparams, TrainerHparams):
    """Typical encoder fine-tuning settings (config.yaml ships the paper's text, epochs and batch)."""
    weight_decay: float = redefault(TrainerHparams, "weight_decay", REQUIRED)
    warmup_ratio: float = redefault(TrainerHparams, "warmup_ratio", REQUIRED)


def build_model(info: dict, kwargs: dict, h: EncoderHparams, env: dict, rank: int):
    """fp32 master weights, unquantised; bf16 autocast through the Trainer where precision is bf16."""
    import torch

    return classifier.load_classifier(info["path"], None, env, dtype=torch.float32, head_module=h.head_module,
                                      **kwargs)


def save(model, final, tok, info: dict, kwargs: dict, thresholds: dict | None) -> None:
    with atomic_path(final, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if thresholds:
            write_json(tmp / adapters.THRESHOLDS_FILE, thresholds)
        faults.write_sums(tmp)


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, predict_after=None, stop_after_epochs: int | None = None) -> dict:
    """Train one cell; writes ``adapter/`` (the model), ``train_log.jsonl`` and ``train_info.json``."""
    return classifier.fit("encoder", model_json, data_dir, out_dir, rank, seed, typed(EncoderHparams, hp, WHERE),
                          threads, build_model, kind="train_full", save=save,
                          predict_after=predict_after, stop_after_epochs=stop_after_epochs)


def predict(adapter_dir: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
            splits: tuple[str, ...] = ("test",)) -> dict:
    """The cell's predictions of each split (:func:`clsbench.classifier.predict`)."""
    return classifier.predict(adapter_dir, data_dir, out_dir, typed(EncoderHparams, hp, WHERE), threads, splits)
