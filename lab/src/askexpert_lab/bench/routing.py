"""Which routing reaches the right expert: the routing variants of one trained system, offline.

For a generalist, its general model and one or more expert runs, every variant at the same operating point
(tau on validation for the same offload share, so the same images are offloaded, except under the learned
rule, which picks its own at that share), on validation (where a variant's own setting is chosen) and on
test (reported):

- ``top-k``: the generalist's top-k probability mass picks the expert (the paper's router);
- ``whole mass``: each expert's whole probability mass over every class (top-k with k = every class);
- ``re-route next xT``: the server re-asks the next expert of the generalist's ranking, at most T experts
  (:mod:`askexpert.contract.reroute`; its confidence chosen on validation);
- ``re-route general``: the server re-asks the general model;
- ``learned deferral``: the rule fitted on validation (:mod:`askexpert.routing.deferral`) decides what to
  offload (Jitkrittum et al. 2023), routed by top-k;
- combinations of the above.

Each row: system accuracy, **coverage** (the share of offloaded images that reach an expert holding their
class, at any try), expert calls an offload (the server's compute), and the bytes an offload sends and
receives (a re-routed answer lists its tries: more bytes down, none up, no second trip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from askexpert.models import open_checkpoint
from askexpert.models.runs import open_expert_run
from askexpert.routing import RoutingPolicy, fit_temperature, system_metrics, tau_for_offload
from askexpert.system.calibrate import (
    ExpertSet,
    Outputs,
    choose_reroute,
    fit_learned_deferral,
    general_as_expert,
    load_experts,
    one_image_bytes,
    outputs_of,
    policy_scores,
    require_same_images,
    validation_confidence,
)

TRY_BYTES = 110  # a try's record in a re-routed answer: {"expert":..,"pred":..,"confidence":..,timings}


@dataclass
class VariantRow:
    """One routing variant of one expert set, at one offload share."""

    experts: str  # the expert set's label
    variant: str
    k: int
    reroute: dict | None  # the rule (tries, to, below) where the server re-routes
    val_accuracy: float
    test_accuracy: float
    test_offload_rate: float
    test_offloaded_accuracy: float
    coverage: float  # % of offloaded test images reaching an expert that holds their class
    expert_calls_per_offload: float
    up_bytes: float  # an offload's request body (raw image)
    down_bytes: float  # its answer, the tries' records included

    def to_json(self) -> dict:
        return asdict(self)


def _row(label: str, variant: str, gen: Outputs, experts: ExpertSet, general: ExpertSet, policy: RoutingPolicy,
         up: int, down: int) -> VariantRow:
    n = gen.val_logits.shape[1]
    member = experts.membership(n)
    val = system_metrics(gen.val_logits, gen.val_labels, member, experts.val, policy, general=general.val)
    test = system_metrics(gen.test_logits, gen.test_labels, member, experts.test, policy, general=general.test)
    extra = (test.expert_calls_per_offload - 1) * TRY_BYTES + (TRY_BYTES if policy.reroute is not None else 0)
    return VariantRow(label, variant, policy.k, policy.reroute.to_dict() if policy.reroute else None, val.accuracy,
                      test.accuracy, test.offload_rate, test.offloaded_accuracy_system, test.coverage,
                      test.expert_calls_per_offload, float(up), float(down + extra))


def _policies(gen: Outputs, experts: ExpertSet, *, offload: float, k: int, fallback: str,
              learned: bool) -> tuple[RoutingPolicy, RoutingPolicy | None]:
    """The top-k policy at ``offload`` (tau on the generalist's validation confidence) and, with ``learned``, the
    learned deferral rule fitted for ``experts`` with its own tau for the same share."""
    n = gen.val_logits.shape[1]
    t_gen = fit_temperature(gen.val_logits, gen.val_labels)
    base = RoutingPolicy(tau=tau_for_offload(validation_confidence(gen, t_gen, "max-prob"), offload), k=min(k, n),
                         temperature=t_gen, fallback=fallback)
    if not learned:
        return base, None
    rule, _ = fit_learned_deferral(gen, experts, temperature=t_gen, k=base.k, fallback=fallback)
    scored = replace(base, confidence="learned", deferral=rule, tau=1.0)
    return base, replace(scored, tau=tau_for_offload(policy_scores(gen.val_logits, scored, experts), offload))


def _bytes(experts: ExpertSet) -> tuple[int, int]:
    return one_image_bytes(open_checkpoint(experts.checkpoints[0]).meta.model.input)


def variants_of(gen: Outputs, general: ExpertSet, experts: ExpertSet, *, offload: float = 0.3, k: int = 3,
                fallback: str = "other", learned: bool = True) -> list[VariantRow]:
    """Every routing variant of one expert set at ``offload`` (module docstring)."""
    base, scored = _policies(gen, experts, offload=offload, k=k, fallback=fallback, learned=learned)
    whole = replace(base, k=gen.val_logits.shape[1])

    def rerouted(policy: RoutingPolicy, tries: int, to: str) -> RoutingPolicy:
        spec = choose_reroute(gen, experts, policy, tries=tries, to=to, general=general)
        return replace(policy, reroute=spec.rule())

    e = len(experts.subsets)
    policies = [(f"top-{base.k}", base), ("whole mass", whole),
                ("re-route next x2", rerouted(base, 2, "next")),
                (f"re-route next x{e}", rerouted(base, e, "next")),
                ("re-route general", rerouted(base, 2, "general")),
                ("whole mass + re-route next x2", rerouted(whole, 2, "next"))]
    if scored is not None:
        policies += [("learned deferral", scored), ("learned deferral + re-route next x2", rerouted(scored, 2, "next"))]
    up, down = _bytes(experts)
    return [_row(experts.label, name, gen, experts, general, policy, up, down) for name, policy in policies]


def one_model_variants(gen: Outputs, model: ExpertSet, *, offload: float = 0.3, k: int = 3, fallback: str = "other",
                       learned: bool = True) -> list[VariantRow]:
    """A general model as the one expert under the variants that apply to one expert (the top-k rule, and
    the learned deferral rule fitted for it): the other design, each with its own best routing."""
    base, scored = _policies(gen, model, offload=offload, k=k, fallback=fallback, learned=learned)
    policies = [(f"top-{base.k}", base)] + ([("learned deferral", scored)] if scored is not None else [])
    up, down = _bytes(model)
    return [_row(model.label, name, gen, model, model, policy, up, down) for name, policy in policies]


def routing_variants(generalist: Path, general: Path, expert_runs: dict[str, Path], *, offload: float = 0.3,
                     k: int = 3, device: str = "auto", learned: bool = True,
                     one_models: dict[str, Path] | None = None) -> list[VariantRow]:
    """Every routing variant (module docstring) of every expert run, from the saved models (logits cached
    beside each checkpoint); ``one_models`` (label -> run): all-class models evaluated as the one expert
    (:func:`one_model_variants`), each row's ``experts`` its label."""
    gen = outputs_of(open_checkpoint(generalist), "the generalist", device)
    general_out = outputs_of(open_checkpoint(general), "the general model", device)
    require_same_images(gen, general_out)
    n = gen.val_logits.shape[1]
    general_set = general_as_expert(general_out, fit_temperature(general_out.val_logits, general_out.val_labels), n)
    rows = []
    for label, run in expert_runs.items():
        experts = load_experts(open_expert_run(run), label, gen, device)
        rows += variants_of(gen, general_set, experts, offload=offload, k=k, learned=learned)
    for label, run in (one_models or {}).items():
        out = outputs_of(open_checkpoint(run), label, device)
        require_same_images(gen, out)
        model = replace(general_as_expert(out, fit_temperature(out.val_logits, out.val_labels), n), label=label)
        rows += one_model_variants(gen, model, offload=offload, k=k, learned=learned)
    return rows
