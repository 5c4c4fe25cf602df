"""Offline evaluation of collaborative systems from saved models (``askexpert evaluate-system``).

Loads (or computes and caches) the logits of the generalist, the general medium model and every
expert of one or more expert runs on the validation and test splits, refuses any model evaluated on
other images than the generalist, fits temperatures on validation (the same calibration
``build-system`` writes into a bundle, so offline and live figures agree), chooses tau on validation
for each target offload rate and k, and reports on test: overall accuracy, offload rate, per-expert
load, accuracy on the offloaded samples (generalist alone, general model, system), routing hit rate.
The general model is also evaluated as a single expert that knows every class, which isolates what
specialisation adds. Control rows at each system's headline operating point: the general model
with its answer restricted to the routed expert's classes (what specialisation adds beyond
restricting the outputs), and the same experts under oracle routing (each offloaded image to an
expert that holds its true class: the upper bound of routing); and every expert's accuracy on its
own subset's test images, for each set and for the restricted general model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from askexpert.errors import ConfigError
from askexpert.models import open_checkpoint
from askexpert.models.runs import open_expert_run
from askexpert.routing import (
    DEFAULT_K,
    RoutingPolicy,
    SystemMetrics,
    fit_temperature,
    system_metrics,
    tau_for_offload,
)
from askexpert.routing.metrics import share, subset_accuracies
from askexpert.system.calibrate import (
    ExpertSet,
    Outputs,
    choose_tau,
    general_as_expert,
    general_restricted,
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
    # at each expert set's headline (tau, k): "<set>: oracle routing" and "general model restricted to <set>'s
    # classes" (one row per distinct partition, named "... the experts' classes" when all sets share one)
    controls: dict[str, GridRow] = field(default_factory=dict)
    subset_accuracy: dict[str, list[float]] = field(default_factory=dict)  # test, per expert, per set
    # the same with the argmax over each expert's own classes ("other" never answered): like for like with the
    # restricted general models, which cannot say "other"
    subset_accuracy_no_other: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, system: str, k: int, rate: float) -> GridRow:
        return next(r for r in self.grid if r.system == system and r.k == k and r.target_offload == rate)


def _acc(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    ok = logits.argmax(1) == labels
    return share(ok if mask is None else ok[mask])


def _evaluate(gen: Outputs, general: Outputs, system: ExpertSet, k: int, tau: float, t_gen: float, confidence: str,
              fallback: str, test_conf: np.ndarray, *, oracle: bool = False, label: str | None = None,
              **target) -> GridRow:
    policy = RoutingPolicy(tau=tau, k=k, temperature=t_gen, confidence=confidence, fallback=fallback)
    n = gen.val_logits.shape[1]
    val = system_metrics(gen.val_logits, gen.val_labels, system.membership(n), system.val, policy, oracle=oracle)
    test = system_metrics(gen.test_logits, gen.test_labels, system.membership(n), system.test, policy, oracle=oracle)
    test.offloaded_accuracy_general = _acc(general.test_logits, general.test_labels, test_conf < tau)
    return GridRow(label or system.label, k, tau, val, test, **target)


def _headline(systems: list[ExpertSet], rows: list[GridRow], rate: float, k: int | None) -> dict[str, GridRow]:
    """Each system's row at the headline offload rate: at ``k``, or (None) the k best on validation."""
    headline = {}
    for system in systems:
        cands = [r for r in rows if r.system == system.label and r.target_offload is not None
                 and abs(r.target_offload - rate) < 1e-9 and k in (None, r.k)]
        if cands:
            headline[system.label] = max(cands, key=lambda r: (r.val.accuracy, -r.k))
    return headline


def evaluate_system(generalist: Path, general: Path, expert_runs: dict[str, Path], *,
                    ks=DEFAULT_KS, rates=DEFAULT_RATES, headline_rate: float = 0.3, headline_k: int | None = DEFAULT_K,
                    target_accuracy: float | None = None, confidence: str = "max-prob", fallback: str = "other",
                    device: str = "auto", other_generals: dict[str, Path] | None = None) -> SystemEvaluation:
    """Sweep (target offload rate, k) for every expert run; tau is always chosen on validation.

    With ``target_accuracy``, also the least offloading that reaches that accuracy on validation,
    for every system and k (rows with ``target_accuracy`` set). The headline rows use ``headline_k``
    (the edge's default, so the table shows what a deployed system does), or with None the k that
    is best on validation. ``other_generals`` (label -> run) are further all-class models (trained at
    other budgets) whose restricted answers are control rows of their own.
    """
    if headline_k is not None and headline_k not in ks:
        ks = sorted({*ks, headline_k})
    gen, gen_model, classes = _generalist_and_general(generalist, general, device)
    n = len(classes)
    t_gen = fit_temperature(gen.val_logits, gen.val_labels)
    t_general = fit_temperature(gen_model.val_logits, gen_model.val_labels)
    systems = [load_experts(open_expert_run(run), label, gen, device) for label, run in expert_runs.items()]
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
    headline = _headline(systems, rows, headline_rate, headline_k)
    restricted = {"": (gen_model, t_general)}
    for label, run in (other_generals or {}).items():
        out = outputs_of(open_checkpoint(run), f"the general model ({label})", device)
        require_same_images(gen, out)
        restricted[label] = (out, fit_temperature(out.val_logits, out.val_labels))
    controls, subset_accuracy, no_other = _controls(systems[:-1], headline, gen, gen_model, restricted, t_gen,
                                                    confidence, fallback, test_conf)
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
        controls=controls, subset_accuracy=subset_accuracy, subset_accuracy_no_other=no_other,
    )


def _generalist_and_general(generalist: Path, general: Path, device: str) -> tuple[Outputs, Outputs, list[str]]:
    """Both models' logits, checked to predict the same classes (returned) on the same images."""
    generalist, general = open_checkpoint(generalist), open_checkpoint(general)
    if general.meta.class_names != generalist.meta.class_names:
        raise ConfigError("the generalist and the general model predict different classes",
                          fix="use models trained on the same dataset")
    gen = outputs_of(generalist, "the generalist", device)
    gen_model = outputs_of(general, "the general model", device)
    require_same_images(gen, gen_model)
    return gen, gen_model, generalist.meta.class_names


def restricted_name(label: str, of: str | None) -> str:
    """The control row of a general model (``label``: "" for the system's own) restricted to an expert
    set's classes (``of``: None when every set shares one partition)."""
    model = "general model" + (f" ({label})" if label else "")
    return f"{model} restricted to the experts' classes" if of is None else f"{model} restricted to {of}'s classes"


def _controls(expert_sets: list[ExpertSet], headline: dict[str, GridRow], gen: Outputs, general: Outputs,
              restricted_models: dict[str, tuple[Outputs, float]], t_gen: float, confidence: str, fallback: str,
              test_conf: np.ndarray) -> tuple[dict[str, GridRow], dict[str, list[float]], dict[str, list[float]]]:
    """Oracle routing and each general model restricted to the experts' classes at each expert set's
    headline point, and every expert's test accuracy on its own subset (with and without "other")."""
    controls: dict[str, GridRow] = {}
    subset_accuracy: dict[str, list[float]] = {}
    no_other: dict[str, list[float]] = {}
    partitions = {tuple(map(tuple, s.subsets)) for s in expert_sets}
    for system in expert_sets:
        subset_accuracy[system.label] = subset_accuracies(system.test, system.subsets, gen.test_labels)
        no_other[system.label] = subset_accuracies(system.test, system.subsets, gen.test_labels, other=False)
        row = headline.get(system.label)
        if row is None:
            continue
        controls[f"{system.label}: oracle routing"] = _evaluate(
            gen, general, system, row.k, row.tau, t_gen, confidence, fallback, test_conf, oracle=True,
            label=f"{system.label}: oracle routing", target_offload=row.target_offload)
        for label, (outputs, temperature) in restricted_models.items():
            name = restricted_name(label, None if len(partitions) == 1 else system.label)
            if name in controls:
                continue
            restricted = general_restricted(outputs, temperature, system.subsets, name)
            controls[name] = _evaluate(gen, general, restricted, row.k, row.tau, t_gen, confidence, fallback,
                                       test_conf, target_offload=row.target_offload)
            subset_accuracy[name] = no_other[name] = subset_accuracies(restricted.test, restricted.subsets,
                                                                       gen.test_labels)
    return controls, subset_accuracy, no_other
