"""How well a judge's flags agree with labels: :func:`binary_metrics` (scikit-learn)."""

from __future__ import annotations


def binary_metrics(truth: list[bool], predicted: list[bool]) -> dict:
    """Accuracy, precision, recall and F1 with *harmful* (True) as the positive class, and the
    confusion counts ``tp``, ``fp``, ``fn``, ``tn``.

    A ratio with a zero denominator (no positive prediction, no positive label, no items) is 0.0
    (scikit-learn's ``zero_division=0``)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    truth, predicted = [bool(t) for t in truth], [bool(p) for p in predicted]
    n = len(truth)
    if n == 0:  # scikit-learn rejects empty input; nothing judged is all zeros
        return {"n": 0, "accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0, "tn": 0}
    # labels fixed, so that a sample with one class still gives a 2 x 2 matrix and binary scores
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(truth, predicted, labels=[False, True]).ravel())
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, labels=[False, True], pos_label=True, average="binary", zero_division=0)
    return {"n": n, "accuracy": float(accuracy_score(truth, predicted)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
