"""Offline evaluation of collaborative systems from saved models.

Loads (or computes and caches) the logits of the generalist, the general medium model and every
expert of one or more expert runs on the validation and test splits; fits temperatures on
validation; chooses tau on validation for each target offload rate and k; and reports on test:
overall accuracy, offload rate, per-expert load, accuracy on the offloaded samples (generalist alone,
general model, system), routing hit rate. The general model is also evaluated as a single expert
that knows every class, which isolates what specialisation adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from askexpert.errors import ConfigError
from askexpert.models import read_meta
from askexpert.models.checkpoint import checkpoint_stem
from askexpert.routing import (
    ExpertAnswers,
    RoutingPolicy,
    confidence_scores,
    finalize,
    fit_temperature,
    membership_matrix,
    route,
    system_metrics,
    tau_for_accuracy,
    tau_for_offload,
)
from askexpert.routing.thresholds import ALL
from askexpert.training.experts import subset_targets
from askexpert.training.logits import cached_logits
from askexpert.training.partition import Partition

DEFAULT_KS = (1, 2, 3, 4, 5)
DEFAULT_RATES = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Split:
    logits: torch.Tensor
    labels: torch.Tensor


@dataclass
class SystemUnderTest:
    """One set of experts: their subsets, temperatures and answers on val and test."""

    label: str
    subsets: list[list[int]]
    val: ExpertAnswers
    test: ExpertAnswers
    temperatures: list[float]


def _splits(checkpoint: Path, device: str) -> tuple[Split, Split]:
    return tuple(Split(*cached_logits(checkpoint, s, device=device)) for s in ("val", "test"))  # type: ignore


def load_experts(run_dir: Path, label: str, num_classes: int, device: str = "auto") -> SystemUnderTest:
    """The experts of an expert run directory (``partition.json`` + ``expert-<e>/model.*``)."""
    run_dir = Path(run_dir)
    partition = Partition.load(run_dir / "partition.json")
    vals, tests, temps = [], [], []
    for e, subset in enumerate(partition.experts):
        stem = checkpoint_stem(run_dir / f"expert-{e}")
        if not stem.with_suffix(".json").is_file():
            raise ConfigError(f"{run_dir} has no trained expert {e}", fix="finish: askexpert train experts --resume")
        val, test = _splits(stem, device)
        t = fit_temperature(val.logits, subset_targets(val.labels, subset, num_classes))
        vals.append(val.logits)
        tests.append(test.logits)
        temps.append(t)
    return SystemUnderTest(
        label, partition.experts,
        ExpertAnswers.from_logits(vals, partition.experts, temps),
        ExpertAnswers.from_logits(tests, partition.experts, temps), temps,
    )


def general_as_expert(general: tuple[Split, Split], temperature: float, num_classes: int) -> SystemUnderTest:
    everything = [list(range(num_classes))]
    return SystemUnderTest(
        "general model as the expert", everything,
        ExpertAnswers.from_logits([general[0].logits], everything, [temperature]),
        ExpertAnswers.from_logits([general[1].logits], everything, [temperature]), [temperature],
    )


def evaluate_system(generalist: Path, general: Path, expert_runs: dict[str, Path], *,
                    ks=DEFAULT_KS, rates=DEFAULT_RATES, headline_rate: float = 0.3,
                    target_accuracy: float | None = None, confidence: str = "max-prob", fallback: str = "other",
                    device: str = "auto") -> dict:
    """Sweep (target offload rate, k) for every expert run; tau is always chosen on validation.

    With ``target_accuracy``, also the least offloading that reaches that accuracy on validation,
    for every system and k (rows with ``target_accuracy`` set).
    """
    gen_meta = read_meta(generalist)
    classes = gen_meta.class_names
    n = len(classes)
    if read_meta(general).class_names != classes:
        raise ConfigError("the generalist and the general model predict different classes",
                          fix="use models trained on the same dataset")
    gen_val, gen_test = _splits(checkpoint_stem(generalist), device)
    general_val, general_test = _splits(checkpoint_stem(general), device)
    if not torch.equal(gen_test.labels, general_test.labels):
        raise ConfigError("the generalist and the general model were evaluated on different test samples",
                          fix="train both on the same dataset config")
    t_gen = fit_temperature(gen_val.logits, gen_val.labels)
    t_general = fit_temperature(general_val.logits, general_val.labels)
    systems = [load_experts(run, label, n, device) for label, run in expert_runs.items()]
    systems.append(general_as_expert((general_val, general_test), t_general, n))

    def acc(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        ok = logits.argmax(1) == labels
        ok = ok if mask is None else ok[mask]
        return 100.0 * float(ok.float().mean()) if ok.numel() else float("nan")

    val_conf = confidence_scores(torch.softmax(gen_val.logits / t_gen, 1), confidence)
    rows = []
    for system in systems:
        membership = membership_matrix(system.subsets, n)
        for k in ks:
            for rate in rates:
                tau = tau_for_offload(val_conf, rate)
                policy = RoutingPolicy(tau=tau, k=k, temperature=t_gen, confidence=confidence, fallback=fallback)
                val_m = system_metrics(gen_val.logits, gen_val.labels, membership, system.val, policy)
                test_m = system_metrics(gen_test.logits, gen_test.labels, membership, system.test, policy)
                test_conf = confidence_scores(torch.softmax(gen_test.logits / t_gen, 1), confidence)
                offloaded = test_conf < tau
                test_m["offloaded_accuracy_general"] = acc(general_test.logits, general_test.labels, offloaded)
                rows.append({"system": system.label, "k": k, "target_offload": rate, "tau": tau,
                             "val": val_m, "test": test_m})
            if target_accuracy is not None:
                # what each validation sample would get if offloaded: finalize with everything offloaded
                everything = RoutingPolicy(tau=ALL, k=k, temperature=t_gen, confidence=confidence, fallback=fallback)
                d = route(gen_val.logits, everything, membership)
                final, _ = finalize(d, *system.val.for_route(d.expert), everything)
                tau, val_acc = tau_for_accuracy(val_conf, d.local_pred == gen_val.labels, final == gen_val.labels,
                                                target_accuracy)
                policy = RoutingPolicy(tau=tau, k=k, temperature=t_gen, confidence=confidence, fallback=fallback)
                rows.append({"system": system.label, "k": k, "target_accuracy": target_accuracy, "tau": tau,
                             "val": system_metrics(gen_val.logits, gen_val.labels, membership, system.val, policy),
                             "test": system_metrics(gen_test.logits, gen_test.labels, membership, system.test,
                                                    policy)})

    # headline: per system, the k with the best validation accuracy at the headline offload rate
    headline = {}
    for system in systems:
        cands = [r for r in rows if r["system"] == system.label
                 and abs(r.get("target_offload", -1) - headline_rate) < 1e-9]
        if cands:
            headline[system.label] = max(cands, key=lambda r: (r["val"]["accuracy"], -r["k"]))
    offloaded = None
    if headline:
        any_row = next(iter(headline.values()))
        tau = any_row["tau"]
        test_conf = confidence_scores(torch.softmax(gen_test.logits / t_gen, 1), confidence)
        offloaded = test_conf < tau
    return {
        "classes": classes,
        "temperatures": {"generalist": t_gen, "general": t_general,
                         **{s.label: s.temperatures for s in systems}},
        "baselines": {
            "generalist": {"accuracy": acc(gen_test.logits, gen_test.labels),
                           "offloaded_accuracy": acc(gen_test.logits, gen_test.labels, offloaded)},
            "general": {"accuracy": acc(general_test.logits, general_test.labels),
                        "offloaded_accuracy": acc(general_test.logits, general_test.labels, offloaded)},
        },
        "headline_offload": headline_rate,
        "headline": headline,
        "grid": rows,
        "settings": {"confidence": confidence, "fallback": fallback, "ks": list(ks), "rates": list(rates),
                     "target_accuracy": target_accuracy},
    }
