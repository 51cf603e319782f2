"""Approach "tfidf": TF-IDF features + logistic regression (one-vs-rest for multi-label).

The cheapest honest baseline: seconds on a CPU. Writes the same files as the neural approaches
(``train_info.json``, ``predictions.parquet``, ``predict_info.json``) plus ``model.joblib``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .data import load_prepared
from .io import atomic_path, split_dir, write_json, write_predictions
from .metrics import decide


def build(hp: dict, multi_label: bool, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(ngram_range=tuple(hp.get("ngram_range", [1, 2])), min_df=hp.get("min_df", 2),
                                 max_features=hp.get("max_features"), sublinear_tf=True)
    clf = LogisticRegression(C=hp.get("C", 10.0), max_iter=2000, random_state=seed)
    return make_pipeline(vectorizer, OneVsRestClassifier(clf) if multi_label else clf)


def fit(data_dir: str, out_dir: str, seed: int, hp: dict) -> dict:
    """Fit on train (fixed hyperparameters: nothing is chosen on val), predict test and val (the
    validation predictions are what best.json compares cells on)."""
    import joblib
    from sklearn.preprocessing import MultiLabelBinarizer

    splits, labels, multi = load_prepared(data_dir)
    out_dir = Path(out_dir)
    train = splits["train"]
    y = MultiLabelBinarizer(classes=labels).fit_transform(train["labels"]) if multi else train["labels"].str[0]
    model = build(hp, multi, seed)
    t0 = time.perf_counter()
    model.fit(train["text"], y)
    train_wall = time.perf_counter() - t0
    n_params = _n_parameters(model)
    write_json(out_dir / "train_info.json", {
        "approach": "tfidf", "rank": 0, "seed": seed, "trainable_params": n_params, "total_params": n_params,
        "n_features": len(model[0].vocabulary_), "train_wall_seconds": train_wall,
        "train_samples_per_second": len(train) / train_wall, "n_train": len(train), "device": "cpu"})
    with atomic_path(out_dir / "model.joblib") as tmp:
        joblib.dump(model, tmp)
    predict_with(model, splits, labels, multi, out_dir, hp, ("test", "val"))
    return {"n_params": n_params, "train_wall_seconds": train_wall}


def probabilities(model, texts, labels: list[str], multi: bool) -> np.ndarray:
    """Per-label probabilities in the order of labels.json (a class the fit never saw gets 0)."""
    probs = model.predict_proba(texts)
    if not multi:  # align sklearn's class order with labels.json
        order = [list(model.classes_).index(label) if label in model.classes_ else None for label in labels]
        probs = np.stack([probs[:, i] if i is not None else np.zeros(len(texts)) for i in order], axis=1)
    return probs


def predict(cell_dir: str, data_dir: str, out_dir: str, hp: dict, splits: tuple[str, ...] = ("test",)) -> dict:
    """Predictions of a fitted cell (``model.joblib``) on each split: predictions.parquet and
    predict_info.json into :func:`clsbench.io.split_dir` (the fit writes test's and val's itself);
    returns the first split's info."""
    import joblib

    loaded, labels, multi = load_prepared(data_dir)
    return predict_with(joblib.load(Path(cell_dir) / "model.joblib"), loaded, labels, multi, out_dir, hp, splits)


def predict_with(model, loaded: dict, labels: list[str], multi: bool, out_dir, hp: dict, splits) -> dict:
    """Predictions of ``model`` on each split (:func:`predict`); returns the first split's info."""
    analyzer = model[0].build_tokenizer()  # whole texts: TF-IDF has no length limit
    infos = []
    for split in splits:
        df = loaded[split]
        t0 = time.perf_counter()
        probs = probabilities(model, df["text"], labels, multi)
        wall = time.perf_counter() - t0
        info = {"split": split, "n": len(df), "infer_wall_seconds": wall, "infer_samples_per_second": len(df) / wall,
                "device": "cpu", "text_tokens_mean": float(np.mean([len(analyzer(t)) for t in df["text"]])),
                "text_truncated_share": 0.0}
        write_predictions(split_dir(out_dir, split), df, probs, decide(probs, multi, hp.get("threshold", 0.5), hp.get("min_labels", 0)), labels,
                          info)
        infos.append(info)
    return infos[0]


def _n_parameters(model) -> int:
    clf = model[-1]
    estimators = clf.estimators_ if hasattr(clf, "estimators_") else [clf]
    return int(sum(e.coef_.size + e.intercept_.size for e in estimators))
