"""Approach "tfidf": TF-IDF features + logistic regression (one-vs-rest for multi-label).

The cheapest honest baseline: seconds on a CPU. A fitted cell (:mod:`clsbench.fitted`): the same
files as the neural approaches (``train_info.json``, ``predictions.parquet``, ``predict_info.json``)
plus ``model.joblib``.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import fitted
from .hparams import REQUIRED, param, typed

WHERE = "approaches.tfidf.hparams"


@dataclass(frozen=True)
class TfidfHparams:
    ngram_range: list[int] = param(REQUIRED, "word n-gram lengths [shortest, longest] of the features",
                                   items={"type": "integer", "minimum": 1}, minItems=2, maxItems=2)
    min_df: int = param(REQUIRED, "a term must occur in at least this many training texts", minimum=1)
    C: float = param(REQUIRED, "inverse L2 regularisation of the logistic regression", exclusiveMinimum=0)
    max_features: int | None = param(None, "keep the most frequent terms only (null: every term)", minimum=1)
    threshold: float = param(0.5, "multi-label: probability at which a label is predicted", minimum=0, maximum=1)
    min_labels: int = param(0, "multi-label: at least this many labels per text", ref="min_labels")


def build(h: TfidfHparams, multi_label: bool, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(ngram_range=tuple(h.ngram_range), min_df=h.min_df, max_features=h.max_features,
                                 sublinear_tf=True)
    return make_pipeline(vectorizer, fitted.logistic(h.C, seed, multi_label))


def fit(data_dir: str, out_dir: str, seed: int, hp: dict) -> dict:
    """Fit on train (fixed hyperparameters: nothing is chosen on val), predict test and val."""
    from .io import read_json

    h = typed(TfidfHparams, hp, WHERE)
    multi = read_json(f"{data_dir}/labels.json")["multi_label"]
    return fitted.fit_cell(build(h, multi, seed), "tfidf", data_dir, out_dir, seed, h.threshold, h.min_labels,
                           describe=lambda m: {"n_features": len(m[0].vocabulary_)})


def predict(cell_dir: str, data_dir: str, out_dir: str, hp: dict, splits: tuple[str, ...] = ("test",)) -> dict:
    """Predictions of a fitted cell (``model.joblib``) on each split (:func:`clsbench.fitted.predict`)."""
    h = typed(TfidfHparams, hp, WHERE)
    return fitted.predict(cell_dir, data_dir, out_dir, h.threshold, h.min_labels, splits)
