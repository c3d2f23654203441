"""From inversion results to a trojan probability: TIJO's shallow classifier, a class-balanced
logistic regression (C = 1) over the model's minimum inversion loss, scored by stratified k-fold
cross-validated ROC-AUC and cross-entropy as the authors' `train_backdoored_cls.py` does."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import SmoothInvError


def feature(min_loss: float) -> list[float]:
    """The classifier's input for one model: its minimum inversion loss."""
    return [float(min_loss)]


@dataclass(frozen=True)
class TrojanClassifier:
    """p(trojaned) = sigmoid(coef · feature + intercept)."""

    coef: tuple[float, ...]
    intercept: float

    @staticmethod
    def fit(features: np.ndarray, labels: np.ndarray) -> "TrojanClassifier":
        from sklearn.linear_model import LogisticRegression  # scikit-learn loads slowly: not at CLI start

        model = LogisticRegression(class_weight="balanced", C=1.0, random_state=0).fit(features, labels)
        return TrojanClassifier(tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0]))

    def probability(self, features: list[float]) -> float:
        if len(features) != len(self.coef):
            raise SmoothInvError(f"the classifier takes {len(self.coef)} feature(s), got {len(features)}")
        z = sum(c * f for c, f in zip(self.coef, features)) + self.intercept
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_dict(self) -> dict:
        return {"coef": list(self.coef), "intercept": self.intercept}

    @staticmethod
    def from_dict(data: dict) -> "TrojanClassifier":
        try:
            coef = tuple(float(c) for c in data["coef"])
            intercept = float(data["intercept"])
        except (KeyError, TypeError, ValueError):
            raise SmoothInvError("the VQA trojan classifier file is corrupt; rerun the VQA benchmark to refit it") from None
        if not all(map(math.isfinite, (*coef, intercept))):
            raise SmoothInvError("the VQA trojan classifier holds non-finite numbers; refit it")
        return TrojanClassifier(coef, intercept)


def cross_validated(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Mean and per-fold ROC-AUC and cross-entropy (nats) of the classifier over stratified folds."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    aucs, ces = [], []
    for train, test in splitter.split(features, labels):
        clf = TrojanClassifier.fit(features[train], labels[train])
        p = np.array([clf.probability(list(f)) for f in features[test]]).clip(1e-7, 1 - 1e-7)
        aucs.append(float(roc_auc_score(labels[test], p)))
        ces.append(float(-np.mean(labels[test] * np.log(p) + (1 - labels[test]) * np.log(1 - p))))
    return {"auc": round(float(np.mean(aucs)), 4), "auc_std": round(float(np.std(aucs)), 4),
            "cross_entropy": round(float(np.mean(ces)), 4), "folds": folds,
            "fold_aucs": [round(a, 4) for a in aucs]}
