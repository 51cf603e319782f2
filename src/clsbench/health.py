"""Cell health: the flags that keep a broken or unfinished cell out of a recommendation.

A cell is **degenerate** when its predictions carry no signal, whatever its F1 says:
  no_label        most texts (> 50%) get no label at all (multi-label probabilities all below the
                  threshold, or prompting answers that name no allowed label);
  one_class       one answer (the same label set) for nearly every text (≥ 95%) where the gold
                  answers are not that uniform;
  below_majority  micro-F1 no better than the best constant answer on the same texts (always the
                  most frequent label, or the most frequent label set);
  far_below_tfidf micro-F1 more than :data:`FAR_BELOW_TFIDF` below the TF-IDF cell of the same
                  dataset and split (judged where both are known: tables and best.json).
A cell is **undertrained** when its best validation epoch was its last: it was still improving when
its epoch budget ended (raise ``max_epochs``).

Degenerate cells are marked in the tables and never chosen by best.json; undertrained cells are
marked everywhere. Each flag comes with one line that names the likely cause and the setting to change.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

NO_LABEL_SHARE = 0.5
ONE_CLASS_SHARE = 0.95
FAR_BELOW_TFIDF = 0.10
DEGENERATE = ("no_label", "one_class", "below_majority", "far_below_tfidf")


def _micro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="micro", zero_division=0))


def majority_f1(gold: np.ndarray) -> tuple[float, np.ndarray]:
    """Micro-F1 of the best constant answer on these texts (``gold``: 0/1 matrix) and that answer (a
    0/1 row): the most frequent single label, or (multi-label) the most frequent label set."""
    g = gold.astype(bool)
    sets = Counter(map(tuple, g.astype(int)))
    candidates = [*np.eye(g.shape[1], dtype=bool), np.array(max(sets, key=sets.get), dtype=bool)]
    scores = [_micro_f1(g, np.tile(row, (len(g), 1))) for row in candidates]
    best = int(np.argmax(scores))
    return scores[best], candidates[best]


UNTRAINED_CAUSE = "the untrained model does not do the task from the prompt alone: train it (instruct) or add shots"


def prediction_flags(gold: np.ndarray, pred: np.ndarray, labels: list[str], multi_label: bool,
                     invalid: np.ndarray | None = None, trained: bool = True) -> list[dict]:
    """Flags that the predictions of one split show by themselves (``gold``/``pred``: 0/1 matrices over
    ``labels``, without the invalid-answer column; ``invalid``: rows whose answer was unparseable;
    ``trained``: False for a prompting cell, whose likely cause is then the prompt, not its training)."""
    g, p = gold.astype(bool), pred.astype(bool)
    n = len(g)
    if n == 0:
        return []
    flags = []
    empty = ~p.any(1)
    if empty.mean() > NO_LABEL_SHARE:
        unparseable = invalid is not None and np.asarray(invalid, bool).mean() > NO_LABEL_SHARE / 2
        cause = ("answers name no allowed label (the model does not follow the answer format: train it, or add "
                 "shots)" if unparseable else
                 "no label reaches the threshold: the classifier learned too little (raise head_learning_rate or "
                 "max_epochs) or the threshold is too high (threshold: tuned)" if multi_label else
                 "no answer for most texts")
        flags.append({"flag": "no_label", "detail": f"no label for {empty.mean():.0%} of texts",
                      "cause": cause if trained or unparseable else UNTRAINED_CAUSE})
    answers = Counter(map(tuple, p.astype(int)))
    top, count = answers.most_common(1)[0]
    gold_top_share = Counter(map(tuple, g.astype(int))).most_common(1)[0][1] / n
    if any(top) and count / n >= ONE_CLASS_SHARE and gold_top_share < ONE_CLASS_SHARE:
        named = "+".join(label for label, on in zip(labels, top) if on)
        flags.append({"flag": "one_class", "detail": f"'{named}' for {count / n:.0%} of texts",
                      "cause": "collapsed to one answer: learning rate too high (lower learning_rate / "
                               "head_learning_rate) or class imbalance (class_weights: balanced)" if trained
                      else UNTRAINED_CAUSE})
    scored = p.copy()
    if invalid is not None:  # an invalid answer counts one false positive (metrics.scored_indicators)
        g = np.hstack([g, np.zeros((n, 1), bool)])
        scored = np.hstack([scored, np.asarray(invalid, bool)[:, None]])
    f1, (floor, constant) = _micro_f1(g, scored), majority_f1(gold)
    if f1 <= floor + 1e-9:
        named = "+".join(label for label, on in zip(labels, constant) if on)
        flags.append({"flag": "below_majority", "detail": f"micro-F1 {f1:.3f} ≤ {floor:.3f} of always answering '{named}'",
                      "cause": "no better than a constant answer: check learning_rate, max_epochs and class_weights"
                      if trained else UNTRAINED_CAUSE})
    return flags


def tfidf_flag(f1_micro: float | None, tfidf_f1_micro: float | None) -> dict | None:
    """The far_below_tfidf flag, where both figures are known."""
    if f1_micro is None or tfidf_f1_micro is None or not f1_micro < tfidf_f1_micro - FAR_BELOW_TFIDF - 1e-9:
        return None
    return {"flag": "far_below_tfidf", "detail": f"micro-F1 {f1_micro:.3f} vs TF-IDF {tfidf_f1_micro:.3f}",
            "cause": "more than 0.10 below a bag-of-words baseline: the model did not learn the task "
                     "(learning_rate, max_epochs) or cannot read it (prompting)"}


def training_flags(info: dict) -> list[dict]:
    """``undertrained`` where the best validation epoch was the last one trained (not where a tuning
    trial's rung stopped it by design: the cell that continues it is judged)."""
    run, best = info.get("epochs_run"), info.get("best_epoch")
    if not run or not best or best < run or info.get("stopped_at_rung"):
        return []
    return [{"flag": "undertrained", "detail": f"best validation epoch is its last ({best} of {run})",
             "cause": "still improving when the budget ended: raise max_epochs"}]


def is_degenerate(flags: list[dict]) -> bool:
    return any(f["flag"] in DEGENERATE for f in flags)


def names(flags: list[dict]) -> str:
    """``one_class; undertrained``: the tables' flags column."""
    return "; ".join(f["flag"] for f in flags)


def line(where: str, flags: list[dict]) -> str:
    """The one line a log shows for a cell's flags: what is wrong, then the first flag's likely cause."""
    kind = "DEGENERATE" if is_degenerate(flags) else "UNDERTRAINED"
    found = "; ".join(f"{f['detail']} ({f['flag']})" for f in flags)
    return f"{where}: {kind}: {found}; likely cause: {flags[0]['cause']}"
