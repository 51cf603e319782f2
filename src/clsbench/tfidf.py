"""Approach "tfidf": TF-IDF features + logistic regression (one-vs-rest for multi-label).

The cheapest honest baseline: seconds on a CPU. A fitted cell (:mod:`clsbench.fitted`): the same
files as the neural approaches (``train_info.json``, ``predictions.parquet``, ``predict_info.json``)
plus ``model.joblib``.
"""
from __future__ import annotations

from . import fitted


def build(hp: dict, multi_label: bool, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(ngram_range=tuple(hp.get("ngram_range", [1, 2])), min_df=hp.get("min_df", 2),
                                 max_features=hp.get("max_features"), sublinear_tf=True)
    return make_pipeline(vectorizer, fitted.logistic(hp.get("C", 10.0), seed, multi_label))


def fit(data_dir: str, out_dir: str, seed: int, hp: dict) -> dict:
    """Fit on train (fixed hyperparameters: nothing is chosen on val), predict test and val."""
    from .io import read_json

    multi = read_json(f"{data_dir}/labels.json")["multi_label"]
    model = build(hp, multi, seed)
    return fitted.fit_cell(model, "tfidf", data_dir, out_dir, seed, hp.get("threshold", 0.5), hp.get("min_labels", 0),
                           describe=lambda m: {"n_features": len(m[0].vocabulary_)})


def predict(cell_dir: str, data_dir: str, out_dir: str, hp: dict, splits: tuple[str, ...] = ("test",)) -> dict:
    """Predictions of a fitted cell (``model.joblib``) on each split (:func:`clsbench.fitted.predict`)."""
    return fitted.predict(cell_dir, data_dir, out_dir, hp.get("threshold", 0.5), hp.get("min_labels", 0), splits)
