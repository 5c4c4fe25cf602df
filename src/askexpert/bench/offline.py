"""Offline evaluation of collaborative systems from saved models (``askexpert evaluate-system``).

Loads (or computes and caches) the logits of the generalist, the general medium model and every
expert of one or more expert runs on the validation and test splits, refuses any model evaluated on
other images than the generalist, fits temperatures on validation (the same calibration
``build-system`` writes into a bundle, so offline and live figures agree), chooses tau on validation
for each target offload rate and k, and reports on test: overall accuracy, offload rate, per-expert
load, accuracy on the offloaded samples (generalist alone, general model, system), routing hit rate.
The general model is also evaluated as a single expert that knows every class, which isolates what
specialisation adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from askexpert.errors import ConfigError
from askexpert.models import read_meta
from askexpert.routing import (
    DEFAULT_K,
    RoutingPolicy,
    SystemMetrics,
    fit_temperature,
    system_metrics,
    tau_for_offload,
)
from askexpert.system.calibrate import (
    ExpertSet,
    Outputs,
    choose_tau,
    general_as_expert,
    load_experts,
    outputs_of,
    require_same_images,
    scaled_confidence,
    validation_confidence,
)

DEFAULT_KS = (1, 2, 3, 4, 5)
DEFAULT_RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
GENERAL_AS_EXPERT = "general model as the expert"


@dataclass
class GridRow:
    """One (system, k, operating point) evaluated on validation and test."""

    system: str
    k: int
    tau: float
    val: SystemMetrics
    test: SystemMetrics
    target_offload: float | None = None
    target_accuracy: float | None = None


@dataclass
class Baseline:
    accuracy: float
    offloaded_accuracy: float  # on the images the headline tau offloads


@dataclass
class SystemEvaluation:
    classes: list[str]
    temperatures: dict[str, float | list[float]]
    baselines: dict[str, Baseline]  # "generalist", "general"
    headline_offload: float
    headline: dict[str, GridRow]  # per system, at the headline rate: k = headline_k (None: the best k on val)
    grid: list[GridRow]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, system: str, k: int, rate: float) -> GridRow:
        return next(r for r in self.grid if r.system == system and r.k == k and r.target_offload == rate)


def _acc(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    ok = logits.argmax(1) == labels
    ok = ok if mask is None else ok[mask]
    return 100.0 * float(ok.mean()) if ok.size else float("nan")


def _evaluate(gen: Outputs, general: Outputs, system: ExpertSet, k: int, tau: float, t_gen: float, confidence: str,
              fallback: str, test_conf: np.ndarray, **target) -> GridRow:
    policy = RoutingPolicy(tau=tau, k=k, temperature=t_gen, confidence=confidence, fallback=fallback)
    n = gen.val_logits.shape[1]
    val = system_metrics(gen.val_logits, gen.val_labels, system.membership(n), system.val, policy)
    test = system_metrics(gen.test_logits, gen.test_labels, system.membership(n), system.test, policy)
    test.offloaded_accuracy_general = _acc(general.test_logits, general.test_labels, test_conf < tau)
    return GridRow(system.label, k, tau, val, test, **target)


def evaluate_system(generalist: Path, general: Path, expert_runs: dict[str, Path], *,
                    ks=DEFAULT_KS, rates=DEFAULT_RATES, headline_rate: float = 0.3, headline_k: int | None = DEFAULT_K,
                    target_accuracy: float | None = None, confidence: str = "max-prob", fallback: str = "other",
                    device: str = "auto") -> SystemEvaluation:
    """Sweep (target offload rate, k) for every expert run; tau is always chosen on validation.

    With ``target_accuracy``, also the least offloading that reaches that accuracy on validation,
    for every system and k (rows with ``target_accuracy`` set). The headline rows use ``headline_k``
    (the edge's default, so the table shows what a deployed system does), or with None the k that
    is best on validation.
    """
    if headline_k is not None and headline_k not in ks:
        ks = sorted({*ks, headline_k})
    classes = read_meta(generalist).class_names
    n = len(classes)
    if read_meta(general).class_names != classes:
        raise ConfigError("the generalist and the general model predict different classes",
                          fix="use models trained on the same dataset")
    gen = outputs_of(generalist, "the generalist", device)
    gen_model = outputs_of(general, "the general model", device)
    require_same_images(gen, gen_model)
    t_gen = fit_temperature(gen.val_logits, gen.val_labels)
    t_general = fit_temperature(gen_model.val_logits, gen_model.val_labels)
    systems = [load_experts(run, label, gen, device) for label, run in expert_runs.items()]
    systems.append(general_as_expert(gen_model, t_general, n))
    val_conf = validation_confidence(gen, t_gen, confidence)
    test_conf = scaled_confidence(gen.test_logits, t_gen, confidence)  # the generalist's, once for every row
    rows: list[GridRow] = []
    for system in systems:
        for k in ks:
            for rate in rates:
                rows.append(_evaluate(gen, gen_model, system, k, tau_for_offload(val_conf, rate), t_gen, confidence,
                                      fallback, test_conf, target_offload=rate))
            if target_accuracy is not None:
                policy, _ = choose_tau(gen, system, temperature=t_gen, k=k, confidence=confidence, fallback=fallback,
                                       accuracy=target_accuracy)
                rows.append(_evaluate(gen, gen_model, system, k, policy.tau, t_gen, confidence, fallback, test_conf,
                                      target_accuracy=target_accuracy))
    headline = {}
    for system in systems:
        cands = [r for r in rows if r.system == system.label and r.target_offload is not None
                 and abs(r.target_offload - headline_rate) < 1e-9 and headline_k in (None, r.k)]
        if cands:
            headline[system.label] = max(cands, key=lambda r: (r.val.accuracy, -r.k))
    offloaded = None
    if headline:
        offloaded = test_conf < next(iter(headline.values())).tau
    return SystemEvaluation(
        classes=classes,
        temperatures={"generalist": t_gen, "general": t_general, **{s.label: s.temperatures for s in systems}},
        baselines={"generalist": Baseline(_acc(gen.test_logits, gen.test_labels),
                                          _acc(gen.test_logits, gen.test_labels, offloaded)),
                   "general": Baseline(_acc(gen_model.test_logits, gen_model.test_labels),
                                       _acc(gen_model.test_logits, gen_model.test_labels, offloaded))},
        headline_offload=headline_rate, headline=headline, grid=rows,
        settings={"confidence": confidence, "fallback": fallback, "ks": list(ks), "rates": list(rates),
                  "target_accuracy": target_accuracy, "headline_k": headline_k},
    )
