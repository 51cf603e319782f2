"""Class-weighted losses for the classifier approaches (``class_weights: balanced``): weights from the
training labels, and the Trainer loss that applies them."""
from __future__ import annotations

import numpy as np

from .metrics import indicator


def class_weights(rows, labels: list[str], multi_label: bool, mode: str):
    """Loss weights from the training labels (``class_weights: balanced``): cross-entropy weights
    n / (classes x count) (scikit-learn's "balanced"), or BCE ``pos_weight`` negatives / positives per
    label; None for ``none``. A class without training examples gets weight 1."""
    import torch

    if mode in (None, "none"):
        return None
    y = indicator(rows, labels).astype(np.float64)
    pos = y.sum(0)
    if multi_label:
        weights = np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
    else:
        weights = np.where(pos > 0, len(y) / (len(labels) * np.maximum(pos, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def weighted_loss(weights, multi_label: bool):
    """A Trainer ``compute_loss_func`` with class weights (the model's own loss has none)."""
    import torch

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        w = weights.to(logits.device)
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=w)
        return torch.nn.functional.cross_entropy(logits, labels.view(-1), weight=w)

    return loss
