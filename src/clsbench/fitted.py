"""Cells whose model is a scikit-learn pipeline fitted in one job (approaches with ``stages == "fit"``:
TF-IDF, sentence embeddings, SetFit): fit on train, write ``model.joblib``, ``train_info.json`` and the
test and validation predictions, and predict new texts from the saved pipeline.

A pipeline's first step may offer ``token_counts(texts) -> (counts, truncated)`` (tokens each text has,
whether it was cut to the step's length); the prediction records report them as the neural cells do.
A step with a ``base_dir`` attribute reads files of the cell (a fine-tuned sentence encoder under the
cell folder): it is set to the cell folder when the pipeline is loaded.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import UserError
from .data import load_prepared
from .io import atomic_path, split_dir, write_predictions, write_train_record
from .metrics import decide, label_lists

MODEL_FILE = "model.joblib"


def targets(train, labels: list[str], multi: bool):
    """The training targets: a label-indicator matrix (multi-label) or one label per text."""
    from sklearn.preprocessing import MultiLabelBinarizer

    return MultiLabelBinarizer(classes=labels).fit_transform(train["labels"]) if multi else train["labels"].str[0]


def fit_cell(model, approach: str, data_dir: str, out_dir: str, seed: int, threshold: float, min_labels: int,
             describe=None, seconds_before: float = 0.0) -> dict:
    """Fit ``model`` on train, then write the cell: train_info.json (``describe(model)``'s keys added; ``seconds_before``
    of training done before this fit, e.g. a sentence encoder's contrastive step, counted in its wall
    time), model.joblib, and the test and val predictions (best.json compares cells on val)."""
    import joblib

    splits, labels, multi = load_prepared(data_dir)
    out_dir = Path(out_dir)
    train = splits["train"]
    t0 = time.perf_counter()
    model.fit(train["text"], targets(train, labels, multi))
    train_wall = seconds_before + time.perf_counter() - t0
    n_params = classifier_parameters(model)
    record = {"approach": approach, "rank": 0, "seed": seed, "trainable_params": n_params, "total_params": n_params,
              "train_wall_seconds": train_wall, "train_samples_per_second": len(train) / train_wall,
              "n_train": len(train), "device": "cpu", **(describe(model) if describe else {})}
    write_train_record(out_dir, record)
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        joblib.dump(model, tmp)
    predict_with(model, splits, labels, multi, out_dir, threshold, min_labels, ("test", "val"))
    return {"n_params": record["total_params"], "train_wall_seconds": train_wall}


def load(cell_dir: str | Path):
    """A fitted cell's pipeline, its steps that read cell files pointed at the cell folder."""
    import joblib

    model = joblib.load(Path(cell_dir) / MODEL_FILE)
    for _, step in model.steps:
        if hasattr(step, "base_dir"):
            step.base_dir = str(cell_dir)
            own = getattr(step, "model_path", None)
            if own and not Path(own).is_absolute() and not (Path(cell_dir) / own).exists():
                raise UserError(f"{Path(cell_dir) / own}: missing (the cell's own model, read by {MODEL_FILE}); copy it "
                                f"with the cell, or fit the cell again: snakemake --forcerun fit -- {cell_dir}/{MODEL_FILE}")
    return model


def predict(cell_dir: str, data_dir: str, out_dir: str, threshold: float, min_labels: int,
            splits: tuple[str, ...] = ("test",)) -> dict:
    """Predictions of a fitted cell on each split into :func:`clsbench.io.split_dir` (the fit writes
    test's and val's itself; new texts: clsbench.apply); returns the first split's info."""
    loaded, labels, multi = load_prepared(data_dir)
    return predict_with(load(cell_dir), loaded, labels, multi, out_dir, threshold, min_labels, splits)


def logistic(C: float, seed: int, multi: bool, class_weight: str | None = None):
    """The classifier every fitted approach puts on its features: logistic regression, one-vs-rest
    for multi-label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight=class_weight)
    return OneVsRestClassifier(clf) if multi else clf


def probabilities(model, texts, labels: list[str], multi: bool) -> np.ndarray:
    """Per-label probabilities in the order of labels.json (a class the fit never saw gets 0)."""
    probs = model.predict_proba(texts)
    return probs if multi else in_label_order(probs, list(model.classes_), labels)


def in_label_order(probs: np.ndarray, classes: list[str], labels: list[str]) -> np.ndarray:
    """Single-label probabilities from a classifier's class order into labels.json's."""
    return np.stack([probs[:, classes.index(label)] if label in classes else np.zeros(len(probs))
                     for label in labels], axis=1)


def predict_with(model, loaded: dict, labels: list[str], multi: bool, out_dir, threshold: float, min_labels: int,
                 splits) -> dict:
    """Predictions of ``model`` on each split (:func:`predict`); returns the first split's info."""
    infos = []
    for split in splits:
        df = loaded[split]
        t0 = time.perf_counter()
        probs = probabilities(model, df["text"], labels, multi)
        wall = time.perf_counter() - t0
        counts, truncated = token_counts(model, list(df["text"]))
        info = {"split": split, "n": len(df), "infer_wall_seconds": wall, "infer_samples_per_second": len(df) / wall,
                "device": "cpu", "text_tokens_mean": float(np.mean(counts)) if len(counts) else 0.0,
                "text_truncated_share": float(np.mean(truncated)) if len(truncated) else 0.0}
        write_predictions(split_dir(out_dir, split), df, probs, label_lists(decide(probs, multi, threshold, min_labels),
                                                                           labels), info)
        infos.append(info)
    return infos[0]


def token_counts(model, texts: list[str]) -> tuple[list[int], list[bool]]:
    """Tokens per text as the pipeline's first step reads them, and whether each was cut."""
    first = model.steps[0][1]
    if hasattr(first, "token_counts"):
        return first.token_counts(texts)
    analyzer = first.build_tokenizer()  # TF-IDF: whole texts, no length limit
    return [len(analyzer(t)) for t in texts], [False] * len(texts)


def classifier_parameters(model) -> int:
    """Weights and biases of the pipeline's last step (one estimator per label for one-vs-rest)."""
    clf = model[-1]
    estimators = clf.estimators_ if hasattr(clf, "estimators_") else [clf]
    return int(sum(e.coef_.size + e.intercept_.size for e in estimators))
