"""Approach "embed": a frozen sentence-embedding model + logistic regression (one-vs-rest for
multi-label). A strong, cheap baseline: one encoding pass over the texts, no gradient through the
model. A fitted cell (:mod:`clsbench.fitted`) whose pipeline's first step is :class:`SentenceEmbedder`.

The model is any sentence-transformers folder (MiniLM-L6 offline) or a plain transformers encoder
(sentence-transformers then mean-pools its token states).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sklearn.base import BaseEstimator, TransformerMixin

from . import fitted
from .hparams import param, typed
from .io import read_json


@dataclass(frozen=True)
class ClassifierHparams:
    """The logistic regression on sentence embeddings (embed, setfit)."""
    normalize: bool = param(True, "unit-length embeddings (cosine geometry) before the classifier")
    C: float = param(10.0, "inverse L2 regularisation of the logistic regression", exclusiveMinimum=0)
    class_weights: str = param("none", "balanced: weight each class inversely to its training frequency",
                               choices=("none", "balanced"))
    threshold: float = param(0.5, "multi-label: probability at which a label is predicted", minimum=0, maximum=1)
    min_labels: int = param(0, "multi-label: at least this many labels per text", ref="min_labels")


@dataclass(frozen=True)
class EmbedHparams(ClassifierHparams):
    max_length: int = param(80, "tokens of a text the model reads (longer texts are cut)", minimum=1)
    batch_size: int = param(64, "texts encoded per batch", minimum=1)


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """Texts -> sentence embeddings with a sentence-transformers model (scikit-learn transformer).

    ``model_path`` relative to ``base_dir`` (a cell's own fine-tuned encoder, set when the cell is loaded)
    or absolute; the model loads on first use and is not pickled with the pipeline.
    """

    def __init__(self, model_path: str, max_length: int = 80, batch_size: int = 64, normalize: bool = True,
                 base_dir: str | None = None):
        self.model_path = model_path
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.base_dir = base_dir

    def fit(self, texts, y=None):
        return self

    def transform(self, texts):
        return self.model().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                   convert_to_numpy=True, show_progress_bar=False)

    def model(self):
        """The loaded SentenceTransformer (cached on the instance)."""
        if getattr(self, "_model", None) is None:
            from sentence_transformers import SentenceTransformer

            path = Path(self.base_dir or ".") / self.model_path
            self._model = SentenceTransformer(str(path), device=device())
            self._model.max_seq_length = self.max_length
        return self._model

    def token_counts(self, texts: list[str]) -> tuple[list[int], list[bool]]:
        """Tokens per text (special tokens included) and whether each was cut to ``max_length``."""
        ids = self.model().tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [min(len(i), self.max_length) for i in ids], [len(i) > self.max_length for i in ids]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_model", None)
        state["base_dir"] = None  # the cell folder is set where the pipeline is loaded (fitted.load)
        return state


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def classifier_settings(hp) -> dict:
    """The :class:`ClassifierHparams` fields of ``hp`` (an approach's hparams that include them)."""
    return {f.name: getattr(hp, f.name) for f in fields(ClassifierHparams)}


def pipeline(model_path: str, hp, multi_label: bool, seed: int, base_dir: str | None = None):
    from sklearn.pipeline import make_pipeline

    embedder = SentenceEmbedder(model_path, hp.max_length, hp.batch_size, hp.normalize, base_dir)
    weights = "balanced" if hp.class_weights == "balanced" else None
    return make_pipeline(embedder, fitted.logistic(hp.C, seed, multi_label, weights))


def set_threads(threads: int | None) -> None:
    """The job's threads and GPU, as every model job sets them (:func:`clsbench.runtime.device_setup`)."""
    from .runtime import device_setup

    device_setup(threads, "fp32")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def describe(model) -> dict:
    """What train_info.json records of the embedding step."""
    body = model[0].model()
    n_body = sum(p.numel() for p in body.parameters())
    dimension = getattr(body, "get_embedding_dimension", None) or body.get_sentence_embedding_dimension  # renamed in 6
    return {"total_params": n_body + fitted.classifier_parameters(model), "encoder_params": n_body,
            "embedding_dim": int(dimension()), "max_length": model[0].max_length, "device": device()}


def fit(model_json: str, data_dir: str, out_dir: str, seed: int, hp: dict, threads: int | None = None) -> dict:
    """Encode train with the frozen model, fit the classifier, predict test and val."""
    h = typed(EmbedHparams, hp, "approaches.embed.hparams")
    set_threads(threads)
    multi = read_json(f"{data_dir}/labels.json")["multi_label"]
    model = pipeline(read_json(model_json)["path"], h, multi, seed)
    return fitted.fit_cell(model, "embed", data_dir, out_dir, seed, h.threshold, h.min_labels, describe=describe)


def predict(cell_dir: str, data_dir: str, out_dir: str, hp: dict, splits: tuple[str, ...] = ("test",),
            threads: int | None = None) -> dict:
    """Predictions of a fitted cell on each split (:func:`clsbench.fitted.predict`)."""
    h = typed(EmbedHparams, hp, "approaches.embed.hparams")
    set_threads(threads)
    return fitted.predict(cell_dir, data_dir, out_dir, h.threshold, h.min_labels, splits)


def as_setfit(cell_dir: str | Path, multi_label: bool, labels: list[str]):
    """A fitted cell whose first step is a :class:`SentenceEmbedder` (embed, setfit) as a ``setfit``
    ``SetFitModel``: its encoder (cut to the cell's ``max_length``) and its fitted logistic regression."""
    from setfit import SetFitModel

    pipeline = fitted.load(cell_dir)
    embedder = pipeline[0]
    return SetFitModel(model_body=embedder.model(), model_head=pipeline[-1], normalize_embeddings=embedder.normalize,
                       multi_target_strategy="one-vs-rest" if multi_label else None,
                       labels=labels if multi_label else None)

