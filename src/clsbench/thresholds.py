"""Multi-label decision thresholds: the fixed one, per-label thresholds tuned on validation
(``threshold: tuned``), and the cross-fitted decisions that score such a cell on validation without
deciding a text with thresholds fitted to it (tuning, best.json)."""
from __future__ import annotations

import numpy as np

THRESHOLDS = "thresholds"  # train_info key of the tuned per-label thresholds


def fixed_threshold(threshold: float | str) -> float:
    """The threshold of training-time validation: the configured one, 0.5 when it is ``tuned``."""
    return 0.5 if threshold == "tuned" else float(threshold)


def tune_thresholds(probs: np.ndarray, gold: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per-label thresholds with the best F1 of that label on validation (``threshold: tuned``); ties
    go to the threshold closest to 0.5, and a label without a positive keeps 0.5."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else grid
    out = np.full(probs.shape[1], 0.5)
    for j in range(probs.shape[1]):
        if gold[:, j].sum() == 0:
            continue
        scores = [f1_score(gold[:, j], probs[:, j] >= g, zero_division=0) for g in grid]
        best = max(scores)
        out[j] = min((g for g, s in zip(grid, scores) if s == best), key=lambda g: abs(g - 0.5))
    return out


def cross_fitted_decisions(probs: np.ndarray, gold: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Decisions of ``threshold: tuned`` on validation without deciding a text with thresholds fitted
    to it: each fold's texts get the thresholds tuned on the other folds (0/1 matrix)."""
    from sklearn.model_selection import KFold

    pred = np.zeros(gold.shape, dtype=np.int8)
    for fit_idx, held_idx in KFold(min(folds, len(gold)), shuffle=True, random_state=seed).split(probs):
        pred[held_idx] = probs[held_idx] >= tune_thresholds(probs[fit_idx], gold[fit_idx])
    return pred


def cross_fitted_f1_micro(probs: np.ndarray, gold: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Validation micro-F1 of ``threshold: tuned`` with cross-fitted thresholds (:func:`cross_fitted_decisions`)."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, cross_fitted_decisions(probs, gold, folds, seed), average="micro", zero_division=0))


def tuned_thresholds(threshold: float | str, multi_label: bool, labels: list[str], val_probs, val_gold: np.ndarray) -> dict:
    """``{"thresholds": {label: threshold}}`` for ``threshold: tuned`` on multi-label data, else {}.
    ``val_probs``: a callable giving the validation probabilities of the restored best model (called
    only when needed)."""
    if not (multi_label and threshold == "tuned"):
        return {}
    return {THRESHOLDS: dict(zip(labels, tune_thresholds(val_probs(), val_gold)))}
