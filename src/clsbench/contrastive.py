"""Approach "setfit": SetFit (Tunstall et al., 2022) - contrastive fine-tuning of a sentence encoder on
pairs of training texts (same label: similar; different: dissimilar; multi-label: setfit's label-set
pairs), then a logistic regression on its embeddings (one-vs-rest for multi-label).

The first step is the ``setfit`` package's own (``Trainer.train_embeddings``, CosineSimilarityLoss);
the fine-tuned encoder is saved in the cell as ``body/`` and the second step is :mod:`clsbench.embed`'s
pipeline on it, so a SetFit cell is a fitted cell (:mod:`clsbench.fitted`) like TF-IDF and embed.
Only train is used for both steps; validation is predicted for best.json, never fitted on.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import embed, fitted
from .data import load_prepared
from .hparams import param, typed
from .io import atomic_path, read_json

BODY = "body"  # the cell's fine-tuned sentence encoder (sentence-transformers folder)


@dataclass(frozen=True)
class SetFitHparams(embed.ClassifierHparams):
    body_learning_rate: float = param(2e-5, "learning rate of the contrastive fine-tuning", exclusiveMinimum=0)
    num_iterations: int = param(5, "pairs drawn per training text and iteration (setfit's num_iterations; "
                                "2 x this x n_train pairs)", minimum=1)
    num_epochs: int = param(1, "epochs over the pairs", minimum=1)
    batch_size: int = param(16, "pairs per contrastive step", minimum=1)
    max_length: int = param(80, "tokens of a text the encoder reads (longer texts are cut)", minimum=1)
    eval_batch_size: int = param(64, "texts encoded per batch for the classifier", minimum=1)


WHERE = "approaches.setfit.hparams"


def train_body(model_path: str, train, labels: list[str], multi: bool, h: SetFitHparams, seed: int, body_dir: Path):
    """The contrastive step: fine-tune the encoder on pairs of training texts; saved to ``body_dir``."""
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(model_path, multi_target_strategy="one-vs-rest" if multi else None,
                                        device=embed.device())
    model.model_body.max_seq_length = h.max_length  # setfit's max_length is its classifier step's only
    index = {label: i for i, label in enumerate(labels)}
    if multi:
        y = [[int(label in set(row)) for label in labels] for row in train["labels"]]
    else:
        y = [index[row[0]] for row in train["labels"]]
    with tempfile.TemporaryDirectory(prefix="setfit-") as scratch:
        args = TrainingArguments(output_dir=scratch, body_learning_rate=h.body_learning_rate,
                                 num_iterations=h.num_iterations, num_epochs=h.num_epochs, batch_size=h.batch_size,
                                 max_length=h.max_length, seed=seed, save_strategy="no", report_to="none",
                                 show_progress_bar=False, logging_strategy="no")
        trainer = Trainer(model=model, args=args)
        trainer.train_embeddings(list(train["text"]), y, args=args)
    with atomic_path(body_dir, is_dir=True) as tmp:
        model.model_body.save(str(tmp))


def fit(model_json: str, data_dir: str, out_dir: str, seed: int, hp: dict, threads: int | None = None) -> dict:
    """Contrastive step on train, then the embedding classifier on the fine-tuned encoder; predicts test and val."""
    h = typed(SetFitHparams, hp, WHERE)
    embed.set_threads(threads)
    splits, labels, multi = load_prepared(data_dir)
    out = Path(out_dir)
    t0 = time.perf_counter()
    train_body(read_json(model_json)["path"], splits["train"], labels, multi, h, seed, out / BODY)
    contrastive_seconds = time.perf_counter() - t0
    head = embed.EmbedHparams(max_length=h.max_length, batch_size=h.eval_batch_size, **embed.classifier_settings(h))
    model = embed.pipeline(BODY, head, multi, seed, base_dir=str(out))
    return fitted.fit_cell(model, "setfit", data_dir, out_dir, seed, h.threshold, h.min_labels,
                           describe=lambda m: described(m, contrastive_seconds),
                           seconds_before=contrastive_seconds)


def described(model, contrastive_seconds: float) -> dict:
    """train_info.json's keys of the encoder: every parameter trained (encoder and classifier)."""
    info = embed.describe(model)
    return {**info, "trainable_params": info["total_params"], "contrastive_seconds": contrastive_seconds}


def predict(cell_dir: str, data_dir: str, out_dir: str, hp: dict, splits: tuple[str, ...] = ("test",),
            threads: int | None = None) -> dict:
    """Predictions of a fitted cell (its ``body/`` and ``model.joblib``) on each split."""
    h = typed(SetFitHparams, hp, WHERE)
    embed.set_threads(threads)
    return fitted.predict(cell_dir, data_dir, out_dir, h.threshold, h.min_labels, splits)
