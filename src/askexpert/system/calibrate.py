"""Build-time calibration: every model's logits on validation and test, checked to be on the same
images, the temperatures fitted on validation, tau chosen for an operating point.

Used by ``askexpert build-system`` (which writes the result into ``system.json``) and by the offline
evaluation (``askexpert evaluate-system``), so both compute the same numbers from the same code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from askexpert.contract.confidence import FITTED_RULE
from askexpert.contract.protocol import infer_response
from askexpert.contract.reroute import Reroute
from askexpert.contract.schema import (
    CurvePoint,
    DataIdentity,
    DesignChoice,
    InputSpec,
    OperatingCurve,
    OperatingPoint,
    Partition,
    RerouteSpec,
)
from askexpert.errors import ConfigError
from askexpert.models import StoredCheckpoint, open_checkpoint
from askexpert.models.runs import ExpertRun
from askexpert.routing import (
    ALL,
    ExpertAnswers,
    Router,
    RoutingPolicy,
    confidence_scores,
    finalize,
    fit_temperature,
    membership_matrix,
    route,
    softmax,
    system_metrics,
    tau_for_accuracy,
    tau_for_offload,
)
from askexpert.routing.deferral import DeferralModel, fit_deferral, gains
from askexpert.routing.metrics import share
from askexpert.runtime.session import GeneralistRun
from askexpert.training.evaluate import subset_targets
from askexpert.training.logits import cached_logits

_SPLIT_KEYS = ("name", "val_fraction", "test_fraction", "split_seed", "val_subset", "test_subset")


@dataclass
class Outputs:
    """A model's logits and the labels of the images they were computed on, per split (NumPy)."""

    label: str
    checkpoint: Path
    val_logits: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    data_config: dict


def outputs_of(checkpoint: StoredCheckpoint, label: str, device: str = "auto") -> Outputs:
    """A checkpoint's logits on validation and test (cached next to it), and its dataset."""
    (vz, vy), (tz, ty) = (cached_logits(checkpoint, s, device=device) for s in ("val", "test"))
    return Outputs(label, checkpoint.stem, vz.numpy(), vy.numpy(), tz.numpy(), ty.numpy(),
                   checkpoint.meta.dataset.config)


def require_same_images(reference: Outputs, other: Outputs) -> None:
    """Refuse models evaluated on other validation or test images than the reference (the generalist):
    their logits would be matched by row position and every figure would be wrong."""
    for split in ("val", "test"):
        a, b = getattr(reference, f"{split}_labels"), getattr(other, f"{split}_labels")
        if a.shape == b.shape and np.array_equal(a, b):
            continue
        differs = [f"{k} {other.data_config.get(k)!r} vs {reference.data_config.get(k)!r}" for k in _SPLIT_KEYS
                   if other.data_config.get(k) != reference.data_config.get(k)]
        detail = (f"{len(b)} vs {len(a)} images" if a.shape != b.shape
                  else f"labels differ at {int((a != b).sum())} of {len(a)} positions")
        raise ConfigError(
            f"{other.label} ({other.checkpoint}) was evaluated on other {split} images than {reference.label} "
            f"({detail}; data config: {', '.join(differs) or 'same split settings, other files'})",
            fix="train every model of a system with the same data config (dataset, split_seed, val/test subsets)")


def data_identity(reference: Outputs) -> DataIdentity:
    def digest(labels: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()

    cfg = {k: v for k, v in reference.data_config.items() if k not in ("root", "download")}
    return DataIdentity(name=str(cfg.get("name", "?")), config=json.loads(json.dumps(cfg, default=str)),
                        val_images=len(reference.val_labels), test_images=len(reference.test_labels),
                        val_labels_sha256=digest(reference.val_labels),
                        test_labels_sha256=digest(reference.test_labels))


@dataclass
class ExpertSet:
    """One set of experts: their subsets, temperatures and answers on validation and test."""

    label: str
    subsets: list[list[int]]
    temperatures: list[float]
    val: ExpertAnswers
    test: ExpertAnswers
    checkpoints: list[StoredCheckpoint]

    def membership(self, num_classes: int) -> np.ndarray:
        return membership_matrix(self.subsets, num_classes)


def load_experts(run: ExpertRun, label: str, reference: Outputs, device: str = "auto") -> ExpertSet:
    """The experts of an expert run, checked against the reference's images, temperatures fitted on val."""
    partition, stems = run.partition, run.checkpoints
    n = len(partition.class_names)
    vals, tests, temps = [], [], []
    for e, (subset, stem) in enumerate(zip(partition.experts, stems, strict=True)):
        out = outputs_of(stem, f"expert {e} of {label}", device)
        require_same_images(reference, out)
        temps.append(fit_temperature(out.val_logits, subset_targets(torch.from_numpy(out.val_labels), subset, n)))
        vals.append(out.val_logits)
        tests.append(out.test_logits)
    return ExpertSet(label, partition.experts, temps, ExpertAnswers.from_logits(vals, partition.experts, temps),
                     ExpertAnswers.from_logits(tests, partition.experts, temps), stems)


def general_as_expert(general: Outputs, temperature: float, num_classes: int) -> ExpertSet:
    everything = [list(range(num_classes))]
    return ExpertSet("general model as the expert", everything, [temperature],
                     ExpertAnswers.from_logits([general.val_logits], everything, [temperature]),
                     ExpertAnswers.from_logits([general.test_logits], everything, [temperature]), [general.checkpoint])


def general_restricted(general: Outputs, temperature: float, subsets: list[list[int]], label: str) -> ExpertSet:
    """The general model in each expert's place, its answer restricted to that expert's classes (never
    "other"): the control that shows what specialisation adds beyond restricting the output classes."""
    def answers(logits: np.ndarray) -> ExpertAnswers:
        return ExpertAnswers.from_logits([logits[:, subset] for subset in subsets], subsets,
                                         [temperature] * len(subsets))

    return ExpertSet(label, [list(s) for s in subsets], [temperature] * len(subsets), answers(general.val_logits),
                     answers(general.test_logits), [general.checkpoint] * len(subsets))


def scaled_confidence(logits: np.ndarray, temperature: float, confidence: str) -> np.ndarray:
    """The routing confidence of every row of ``logits`` at ``temperature``."""
    return confidence_scores(softmax(logits, temperature), confidence)


def validation_confidence(generalist: Outputs, temperature: float, confidence: str) -> np.ndarray:
    return scaled_confidence(generalist.val_logits, temperature, confidence)


def routed_outcomes(generalist: Outputs, experts: ExpertSet, policy: RoutingPolicy, split: str = "val"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``split``: whether the answer is right when kept on the edge, and when offloaded to the
    expert the policy's router picks (after the fallback, as the edge would answer)."""
    logits, labels = getattr(generalist, f"{split}_logits"), getattr(generalist, f"{split}_labels")
    everything = replace(policy, tau=ALL)
    d = route(logits, everything, experts.membership(logits.shape[1]))
    final, _ = finalize(d, *getattr(experts, split).for_route(d.expert), everything)
    return d.local_pred == labels, final == labels


def fit_learned_deferral(generalist: Outputs, experts: ExpertSet, *, temperature: float, k: int,
                         fallback: str) -> tuple[DeferralModel, int]:
    """The learned deferral rule (:mod:`askexpert.routing.deferral`) of this system at ``k``, fitted on
    validation: the edge's features against the gain of offloading each image. Returns it and the number of
    validation images it was fitted on."""
    policy = RoutingPolicy(tau=ALL, k=k, temperature=temperature, fallback=fallback)
    n = generalist.val_logits.shape[1]
    local, remote = routed_outcomes(generalist, experts, policy)
    features = Router(policy, experts.membership(n)).deferral_inputs(generalist.val_logits)
    return fit_deferral(features, gains(local, remote), num_experts=len(experts.subsets), num_classes=n,
                        k=k), len(local)


def _base_policy(temperature: float, k: int, confidence: str, fallback: str,
                 deferral: DeferralModel | None) -> RoutingPolicy:
    return RoutingPolicy(tau=ALL, k=k, temperature=temperature, confidence=FITTED_RULE if deferral else confidence,
                         fallback=fallback, deferral=deferral)


def policy_scores(logits: np.ndarray, policy: RoutingPolicy, experts: ExpertSet) -> np.ndarray:
    """The keep-score of every row under ``policy`` (its confidence rule, or its learned rule)."""
    return Router(policy, experts.membership(logits.shape[1])).route(logits).confidence


def choose_tau(generalist: Outputs, experts: ExpertSet, *, temperature: float, k: int, confidence: str,
               fallback: str, offload: float | None = None, accuracy: float | None = None,
               tau: float | None = None, deferral: DeferralModel | None = None) -> tuple[RoutingPolicy, OperatingPoint]:
    """The policy for one operating point, chosen on validation: a target offload share, a target
    accuracy (the least offloading that reaches it) or a given tau; with what it gives on validation.
    With ``deferral`` (a learned rule) tau applies to its score instead of ``confidence``."""
    if sum(v is not None for v in (offload, accuracy, tau)) != 1:
        raise ConfigError("choose exactly one operating point", fix="pass one of --offload, --accuracy or --tau")
    base = _base_policy(temperature, k, confidence, fallback, deferral)
    conf = policy_scores(generalist.val_logits, base, experts)
    membership = experts.membership(generalist.val_logits.shape[1])
    if offload is not None:
        chosen, target, value = tau_for_offload(conf, offload), "offload", offload
    elif accuracy is not None:
        local, remote = routed_outcomes(generalist, experts, base)
        chosen, _ = tau_for_accuracy(conf, local, remote, accuracy)
        target, value = "accuracy", accuracy
    else:
        chosen, target, value = float(tau), "tau", float(tau)
    policy = replace(base, tau=chosen)
    m = system_metrics(generalist.val_logits, generalist.val_labels, membership, experts.val, policy)
    return policy, OperatingPoint(target=target, value=value, val_offload_rate=m.offload_rate,
                                  val_accuracy=m.accuracy)


REROUTE_BELOW = (0.0, 0.3, 0.5, 0.7, 0.9)  # the confidences build-system screens re-routing under, on validation


def choose_reroute(generalist: Outputs, experts: ExpertSet, policy: RoutingPolicy, *, tries: int, to: str,
                   general: ExpertSet | None = None, below: float | None = None) -> RerouteSpec:
    """The re-routing rule for ``policy``'s operating point, its confidence (``below``: re-ask under it too)
    chosen on validation among :data:`REROUTE_BELOW` (most accurate, then the lowest: the fewest expert calls)
    unless given; with what it gives there against the routed expert alone."""
    if to == "general" and general is None:
        raise ConfigError("re-routing to the general model needs it in the bundle",
                          fix="drop --no-general (the expert run must name its general model), or --reroute next")
    membership = experts.membership(generalist.val_logits.shape[1])
    answers = None if general is None else general.val

    def on_val(rule: Reroute | None):
        return system_metrics(generalist.val_logits, generalist.val_labels, membership, experts.val,
                              replace(policy, reroute=rule), general=answers)

    plain = on_val(None)
    scored = [(on_val(Reroute(tries, to, b)), b) for b in ((below,) if below is not None else REROUTE_BELOW)]
    best, chosen = max(scored, key=lambda mb: (mb[0].accuracy, -mb[1]))
    return RerouteSpec(tries=tries, to=to, below=chosen, validation={
        "accuracy": best.accuracy, "accuracy_without": plain.accuracy, "coverage": best.coverage,
        "coverage_without": plain.coverage, "expert_calls_per_offload": best.expert_calls_per_offload})


def general_partition(class_names: list[str]) -> Partition:
    """The one-expert partition of a bundle whose server is the general model (``--server general``)."""
    return Partition(method="general", class_names=list(class_names), experts=[list(range(len(class_names)))],
                     details={"why": "the general model as the one expert"}).check()


def choose_design(server: str, generalist: Outputs, experts: ExpertSet, general: ExpertSet | None,
                  policy: RoutingPolicy) -> DesignChoice:
    """Experts or the general model on the server: both on validation at ``policy`` (the experts with its
    routing, re-routing included; the general model answering the same offloaded images), the better built
    under ``auto`` (the experts on a tie), or the one the user named."""
    if general is None:
        if server == "general":
            raise ConfigError("--server general needs the general model in the bundle",
                              fix="drop --no-general (the expert run must name its general model), or --server experts")
        return DesignChoice(server="experts", chosen_by="user" if server == "experts" else "validation",
                            reason="no general model to compare with (the expert run names none, or --no-general)")
    n = generalist.val_logits.shape[1]
    labels = generalist.val_labels
    e_acc = system_metrics(generalist.val_logits, labels, experts.membership(n), experts.val, policy,
                           general=general.val).accuracy
    d = Router(replace(policy, reroute=None), experts.membership(n)).route(generalist.val_logits)
    g_final, _ = finalize(d, general.val.pred[0], general.val.conf[0], policy)
    g_acc = share(g_final == labels)
    figures = (f"on validation, offloading the same {100 * float(d.offload.mean()):.1f}% of images, the experts with "
               f"their routing answer {e_acc:.2f}%, the general model as the one expert {g_acc:.2f}%")
    if server == "auto":
        chosen = "general" if g_acc > e_acc else "experts"
        reason = f"{figures}: the {'general model' if chosen == 'general' else 'experts'} built"
        return DesignChoice(server=chosen, chosen_by="validation", experts_val_accuracy=e_acc,
                            general_val_accuracy=g_acc, reason=reason)
    better = "general" if g_acc > e_acc else "experts"
    reason = f"{figures}: --server {server} as asked" + ("" if better == server else f" (the {better} lead)")
    return DesignChoice(server=server, chosen_by="user", experts_val_accuracy=e_acc, general_val_accuracy=g_acc,
                        reason=reason)


def generalist_policy(generalist: StoredCheckpoint, *, offload_rate: float, k: int, confidence: str = "max-prob",
                      fallback: str = "other", tau: float | None = None, temperature: float | None = None,
                      device: str = "cpu") -> RoutingPolicy:
    """A routing policy from the generalist's validation split alone (temperature fitted and tau chosen
    for ``offload_rate``, each only when not given): what a run directory gets without a bundle."""
    if tau is None or temperature is None:
        gen = outputs_of(generalist, "the generalist", device)
        temperature = temperature if temperature is not None else fit_temperature(gen.val_logits, gen.val_labels)
        if tau is None:
            tau = tau_for_offload(validation_confidence(gen, temperature, confidence), offload_rate)
    return RoutingPolicy(tau=tau, k=k, temperature=temperature, confidence=confidence, fallback=fallback)


def calibrated_run(run_dir: Path, *, offload_rate: float, k: int, confidence: str = "max-prob",
                   fallback: str = "other", tau: float | None = None, temperature: float | None = None,
                   device: str = "cpu") -> GeneralistRun:
    """A generalist's run directory made ready for the edge at build time: its routing policy from
    validation (:func:`generalist_policy`) and its dataset, so the edge's run time never calibrates."""
    generalist = open_checkpoint(run_dir)
    policy = generalist_policy(generalist, offload_rate=offload_rate, k=k, confidence=confidence, fallback=fallback,
                               tau=tau, temperature=temperature, device=device)
    return GeneralistRun(Path(run_dir), policy, generalist.meta.dataset.config or None)


def curve_rates() -> list[float]:
    """The offload shares the operating curve is computed at: every 0.5% up to 10% (where a latency budget
    on a slow link lands), every 2% above."""
    return sorted({round(r, 4) for r in [i / 200 for i in range(21)] + [i / 50 for i in range(5, 51)]})


def one_image_bytes(spec: InputSpec, topk: int = 3) -> tuple[int, int]:
    """Bytes of one offloaded image: its request body (raw uint8) and the server's JSON answer (the
    protocol's own answer builder, with full-precision probabilities as the server sends them)."""
    ids = list(range(topk))
    p = [0.4123456789012345, 0.3123456789012345, 0.2123456789012345][:topk]
    result = {"pred": 0, "confidence": p[0], "other": False, "topk": ids, "probs": p}
    down = json.dumps(infer_response("0", [result], 0.0123456789012, 1.123456789012, 1), separators=(",", ":"))
    return spec.channels * spec.size * spec.size, len(down.encode())


def operating_curve(generalist: Outputs, experts: ExpertSet, *, temperature: float, ks: list[int],
                    confidence: str, fallback: str, spec: InputSpec,
                    deferral: DeferralModel | None = None, general: ExpertSet | None = None) -> OperatingCurve:
    """The system on validation over a grid of tau (:func:`curve_rates`) for every k in ``ks``: offload
    rate, accuracy, accuracy on the offloaded images and each expert's share, as the bundle carries it.
    A learned rule (``deferral``) reads the top-k mass it was fitted at: its curve holds that k alone.
    ``general`` (the general model's answers): the curve records its accuracy on every validation image, full
    offload's (what ``askexpert plan`` weighs collaboration against)."""
    n = generalist.val_logits.shape[1]
    membership = experts.membership(n)
    if deferral is not None:
        ks = [deferral.k]
    base = _base_policy(temperature, min(ks), confidence, fallback, deferral)
    conf = policy_scores(generalist.val_logits, base, experts)
    taus = sorted({tau_for_offload(conf, r) for r in curve_rates()})
    points = []
    for k in sorted(set(ks)):
        for tau in taus:
            policy = replace(base, tau=tau, k=k)
            m = system_metrics(generalist.val_logits, generalist.val_labels, membership, experts.val, policy)
            load = np.asarray(m.expert_load, dtype=np.float64)
            points.append(CurvePoint(
                tau=tau, k=k, offload_rate=m.offload_rate, accuracy=m.accuracy,
                offloaded_accuracy=None if m.offloaded == 0 else m.offloaded_accuracy_system,
                expert_share=(load / load.sum()).tolist() if load.sum() else [0.0] * len(load)))
    up, down = one_image_bytes(spec)
    general_accuracy = None if general is None else share(general.val.pred[0] == generalist.val_labels)
    return OperatingCurve(points=points, up_bytes=up, down_bytes=down, general_accuracy=general_accuracy)
