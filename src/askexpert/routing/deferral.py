"""A learned deferral rule: offload the images the routed expert will get right and the generalist wrong.

The paper's rule offloads the images the generalist is least sure of. That offloads many images the expert
answers no better (benchmarks/topics/routing.md, "Which images to offload"), and confidence-based deferral is
known to fall short exactly when the second stage is a set of specialists (Jitkrittum et al., "When does
confidence-based deferral suffice?", NeurIPS 2023). This rule models the *gain* of offloading an image
instead, from what the edge already has at no extra cost:

- the generalist's calibrated probabilities: its top three, margin and normalised entropy;
- the routing: the share of the top-k mass held by the expert the router picks, and which expert;
- the generalist's top class (one-hot: which classes its expert answers better).

A multinomial logistic regression over the three outcomes of an offload (the expert right and the
generalist wrong: +1; both right or both wrong: 0; the reverse: -1) gives the expected gain
``g = P(+1) - P(-1)`` in [-1, 1]; the score ``(1 - g) / 2`` lies in [0, 1] and, like every confidence,
is higher where the edge should keep its answer. tau, the operating curve and every controller work on
it unchanged. Fitted on validation only (:func:`fit_deferral`: Newton's method, its L2 strength chosen
by 5-fold cross-validation). NumPy only: the edge runs it beside ONNX Runtime, a few microseconds a
sample.

:func:`oracle_accuracy` is the upper bound: offload exactly the images where the answer gains, at each
offload share.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

OUTCOMES = (-1, 0, 1)  # offloading loses, changes nothing, gains
BASE_FEATURES = ("p1", "p2", "p3", "margin", "entropy", "p1^2", "routed mass share")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 5


def feature_names(num_experts: int, num_classes: int) -> list[str]:
    """The names of :func:`deferral_features`' columns, in order."""
    return ([*BASE_FEATURES] + [f"expert {e}" for e in range(num_experts)]
            + [f"expert {e} x p1" for e in range(num_experts)] + [f"top class {c}" for c in range(num_classes)])


def base_features(p: np.ndarray, top_p: np.ndarray, routed_mass, k: int) -> list:
    """The :data:`BASE_FEATURES` of each row (``p`` ``[N, C]``, or one row ``[C]``; ``top_p`` its largest
    probabilities by falling value, at least two; ``routed_mass`` the top-k probability the routed expert's
    classes hold): a list of ``[N]`` arrays, or of scalars for one row, by the same NumPy operations either way."""
    c = p.shape[-1]
    p1, p2 = top_p[..., 0], top_p[..., 1]
    p3 = top_p[..., 2] if top_p.shape[-1] > 2 else p1 * 0
    entropy = 1.0 - (-(p * np.log(np.maximum(p, 1e-12))).sum(-1)) / np.float32(np.log(max(c, 2)))
    share = routed_mass / np.maximum(top_p[..., :k].sum(-1), 1e-12)
    return [p1, p2, p3, p1 - p2, entropy, p1 * p1, share]


def deferral_features(p: np.ndarray, top_p: np.ndarray, top1: np.ndarray, mass: np.ndarray,
                      k: int) -> np.ndarray:
    """``[N, F]`` features of each row: ``p`` the calibrated probabilities ``[N, C]``, ``top_p`` the
    largest of them by falling value ``[N, >= 2]``, ``top1`` the top class ``[N]``, ``mass`` the top-k
    probability each expert's classes hold ``[N, E]`` (the router picks its argmax), ``k`` the router's k."""
    n, c = p.shape
    e = mass.shape[1]
    expert = mass.argmax(1)
    out = np.zeros((n, len(BASE_FEATURES) + 2 * e + c), dtype=np.float32)
    base = len(BASE_FEATURES)
    out[:, :base] = np.stack(base_features(p, top_p, mass[np.arange(n), expert], k), 1)
    out[np.arange(n), base + expert] = 1.0
    out[np.arange(n), base + e + expert] = top_p[:, 0]
    out[np.arange(n), base + 2 * e + top1] = 1.0
    return out


@dataclass(frozen=True, eq=False)
class DeferralModel:
    """A fitted rule: standardisation and the weights of the outcomes -1, 0, +1 (``[F + 1, 3]``, the last
    row the bias), for a system of ``num_experts`` experts over ``num_classes`` classes routed at ``k``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    num_experts: int
    num_classes: int
    k: int
    l2: float

    @cached_property
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The standardisation folded into the weights (float64): ``z = bias + sum_j x_j w_j``."""
        w = self.weights[:-1].astype(np.float64) / self.scale.astype(np.float64)[:, None]
        return w, self.weights[-1].astype(np.float64) - self.mean.astype(np.float64) @ w

    def score_parts(self, base: list, expert, top1) -> np.ndarray:
        """The keep-score ``[N]`` from the :func:`base_features` (arrays ``[N]``) and the routed expert and top
        class of each row: elementwise float64 operations in the order :meth:`score_one` takes them, so a row
        scored alone gets the bits it gets in a batch."""
        w, z = self._folded
        e, nb = self.num_experts, len(BASE_FEATURES)
        expert = np.asarray(expert)
        z = z + w[nb + expert]
        z = z + w[nb + 2 * e + np.asarray(top1)]
        z = z + np.asarray(base[0], dtype=np.float64)[:, None] * w[nb + e + expert]
        for j in range(nb):
            z = z + np.asarray(base[j], dtype=np.float64)[:, None] * w[j]
        return _keep_score(z)

    def score_one(self, base: list, expert: int, top1: int) -> float:
        """:meth:`score_parts` for one row (``base``: the features as scalars), in plain Python floats: a few
        microseconds, where NumPy's per-call cost would take fifty."""
        w, bias = self._folded_lists
        e, nb = self.num_experts, len(BASE_FEATURES)
        x = [float(v) for v in base]
        z = []
        for o in range(len(OUTCOMES)):
            v = bias[o] + w[nb + expert][o]
            v = v + w[nb + 2 * e + top1][o]
            v = v + x[0] * w[nb + e + expert][o]
            for j in range(nb):
                v = v + x[j] * w[j][o]
            z.append(v)
        z = np.array(z)
        q = np.exp(z - z.max())  # the steps of _keep_score on one row, each on the same values
        gain = (q[2] - q[0]) / q.sum()
        return np.float32((1.0 - gain) / 2.0)

    @cached_property
    def _folded_lists(self) -> tuple[list, list]:
        w, bias = self._folded
        return w.tolist(), bias.tolist()

    def check(self, num_experts: int, num_classes: int) -> None:
        if (num_experts, num_classes) != (self.num_experts, self.num_classes):
            raise ValueError(f"the deferral rule was fitted for {self.num_experts} experts over {self.num_classes} "
                             f"classes, and the router has {num_experts} over {num_classes}")

    def to_dict(self) -> dict:
        return {"features": feature_names(self.num_experts, self.num_classes), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(), "num_experts": self.num_experts,
                "num_classes": self.num_classes, "k": self.k, "l2": self.l2}

    @classmethod
    def from_dict(cls, d: dict) -> DeferralModel:
        model = cls(np.asarray(d["mean"], np.float32), np.asarray(d["scale"], np.float32),
                    np.asarray(d["weights"], np.float32), int(d["num_experts"]), int(d["num_classes"]), int(d["k"]),
                    float(d["l2"]))
        expected = len(feature_names(model.num_experts, model.num_classes))
        if model.mean.shape != (expected,) or model.scale.shape != (expected,) or model.weights.shape != (
                expected + 1, len(OUTCOMES)):
            raise ValueError(f"a deferral rule for {model.num_experts} experts and {model.num_classes} classes has "
                             f"{expected} features; the stored arrays have other shapes")
        if list(d.get("features", feature_names(model.num_experts, model.num_classes))) != feature_names(
                model.num_experts, model.num_classes):
            raise ValueError("the deferral rule was fitted on other features than this version computes")
        return model

    def __eq__(self, other) -> bool:
        return isinstance(other, DeferralModel) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.weights.tobytes())


def _keep_score(z: np.ndarray) -> np.ndarray:
    """``(1 - expected gain) / 2`` from the outcome logits ``[N, 3]`` (-1, 0, +1), float32."""
    q = np.exp(z - z.max(1, keepdims=True))
    gain = (q[:, 2] - q[:, 0]) / q.sum(1)
    return ((1.0 - gain) / 2.0).astype(np.float32)


def gains(local_correct, offload_correct) -> np.ndarray:
    """Per sample: +1 where offloading turns a wrong answer right, -1 the reverse, 0 otherwise."""
    return np.asarray(offload_correct, dtype=np.int64) - np.asarray(local_correct, dtype=np.int64)


def _objective(w: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> float:
    z = x @ w
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-(onehot * logp).sum(1).mean() + 0.5 * l2 * (w[:-1] ** 2).sum())


def _newton(x: np.ndarray, onehot: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """Weights ``[F + 1, 3]`` (column 0 held at zero: the reference outcome) minimising the mean NLL plus
    ``l2 / 2`` times the squared weights (the bias rows free), by Newton's method with backtracking."""
    n, f1 = x.shape
    k = onehot.shape[1] - 1
    w = np.zeros((f1, k + 1))
    reg = np.full(f1, l2)
    reg[-1] = 1e-8  # the bias: all but free, kept invertible when an outcome never occurs
    value = _objective(w, x, onehot, l2)
    for _ in range(iters):
        z = x @ w
        q = np.exp(z - z.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        grad = (x.T @ (q - onehot))[:, 1:] / n + reg[:, None] * w[:, 1:]
        hess = np.zeros((k * f1, k * f1))
        for a in range(k):
            for b in range(k):
                weight = q[:, a + 1] * ((a == b) - q[:, b + 1])
                hess[a * f1:(a + 1) * f1, b * f1:(b + 1) * f1] = (x.T * weight) @ x / n
        hess += np.diag(np.tile(reg, k))
        step = np.linalg.solve(hess, grad.T.reshape(-1)).reshape(k, f1).T
        t = 1.0
        while True:
            trial = w.copy()
            trial[:, 1:] -= t * step
            new = _objective(trial, x, onehot, l2)
            if new <= value - 1e-4 * t * float((grad * step).sum()) or t < 1e-6:
                break
            t /= 2
        w, done = trial, value - new < 1e-10
        value = new
        if done:
            break
    return w


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(0)
    scale = features.std(0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def _design(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    x = (features - mean) / scale
    return np.concatenate([x, np.ones((len(x), 1))], 1)


def _outcomes(gain: np.ndarray) -> np.ndarray:
    onehot = np.zeros((len(gain), len(OUTCOMES)))
    onehot[np.arange(len(gain)), np.asarray(gain, dtype=np.int64) + 1] = 1.0
    return onehot


def _folds(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % folds


@dataclass(frozen=True)
class OutcomeFit:
    """A multinomial logistic regression from any features to the outcome of an offload (-1, 0, +1): the
    standardisation, the weights ``[F + 1, 3]`` (the last row the bias) and the L2 strength it used."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    l2: float

    def keep_score(self, features) -> np.ndarray:
        """``(1 - expected gain) / 2`` of each row, through the design matrix (fitting and screening; the
        edge scores through :class:`DeferralModel`)."""
        z = _design(np.asarray(features, dtype=np.float64), self.mean, self.scale) @ self.weights
        return _keep_score(z)


def fit_outcome_model(features, gain, *, l2: float | None = None, seed: int = 0) -> OutcomeFit:
    """Fitted on ``features`` ``[N, F]`` and each row's ``gain`` (:func:`gains`) by Newton's method; ``l2``
    chosen by 5-fold cross-validated NLL from :data:`L2_GRID` unless given (folds drawn by ``seed``)."""
    features = np.asarray(features, dtype=np.float64)
    gain = np.asarray(gain, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(gain) or len(gain) < 2 * FOLDS:
        raise ValueError(f"fitting a deferral rule needs [N, F] features and N gains, N >= {2 * FOLDS}")
    if not np.isin(gain, OUTCOMES).all():
        raise ValueError("gains must be -1, 0 or +1")
    onehot = _outcomes(gain)
    if l2 is None:
        fold = _folds(len(gain), FOLDS, seed)
        losses = []
        for lam in L2_GRID:
            loss = 0.0
            for f in range(FOLDS):
                train, held = fold != f, fold == f
                mean, scale = _standardise(features[train])
                w = _newton(_design(features[train], mean, scale), onehot[train], lam)
                loss += _objective(w, _design(features[held], mean, scale), onehot[held], 0.0) * held.sum()
            losses.append(loss)
        l2 = L2_GRID[int(np.argmin(losses))]
    mean, scale = _standardise(features)
    return OutcomeFit(mean, scale, _newton(_design(features, mean, scale), onehot, l2), float(l2))


def fit_deferral(features, gain, *, num_experts: int, num_classes: int, k: int, l2: float | None = None,
                 seed: int = 0) -> DeferralModel:
    """The rule fitted on ``features`` (:func:`deferral_features`) and each row's ``gain`` (:func:`gains`):
    :func:`fit_outcome_model`, kept in the form the edge scores with."""
    fit = fit_outcome_model(features, gain, l2=l2, seed=seed)
    return DeferralModel(fit.mean.astype(np.float32), fit.scale.astype(np.float32), fit.weights.astype(np.float32),
                         num_experts, num_classes, k, fit.l2)


def oracle_accuracy(local_correct, offload_correct, share: float) -> float:
    """Accuracy (%) when a share ``share`` of the samples is offloaded and the oracle picks which: first those
    where offloading gains, then those where it changes nothing, last those where it loses."""
    local = np.asarray(local_correct, dtype=np.int64)
    g = np.sort(gains(local, offload_correct))[::-1]
    m = int(round(share * len(local)))
    return float((local.sum() + g[:m].sum()) / len(local) * 100)
