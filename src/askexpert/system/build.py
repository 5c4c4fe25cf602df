"""``askexpert build-system``: trained runs + an operating point -> one deployable bundle.

    bundle/
      system.json                      schema-versioned contract (classes, partition, routing, files + sha256)
      generalist.onnx                  the edge model: uint8 images in, logits out (ONNX Runtime, no torch)
      generalist/model.safetensors + model.json     the same generalist as a checkpoint
      experts/expert-<e>/model.safetensors + model.json
      general/model.safetensors + model.json        the general model (full-offload baseline), unless left out

Calibration happens here, once, on validation data: the generalist's temperature, every expert's
temperature (the server answers with them, so offline and live figures agree), and tau for the
chosen operating point. Every model must have been evaluated on the same validation and test images.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import askexpert
from askexpert.contract.bundle import System, sha256_file
from askexpert.contract.confidence import FITTED_RULE
from askexpert.contract.confidence import rule as confidence_rule
from askexpert.contract.reroute import Reroute
from askexpert.contract.schema import (
    SCHEMA_VERSION,
    SYSTEM_FILE,
    DeferralSpec,
    DesignChoice,
    ExpertEntry,
    GeneralEntry,
    GeneralistEntry,
    OperatingPoint,
    Partition,
    RerouteSpec,
    RoutingSpec,
    SystemManifest,
)
from askexpert.errors import ConfigError
from askexpert.models import StoredCheckpoint, open_checkpoint
from askexpert.models.runs import ExpertRun, open_expert_run
from askexpert.routing import RoutingPolicy, fit_temperature
from askexpert.routing.deferral import DeferralModel
from askexpert.system.calibrate import (
    ExpertSet,
    choose_design,
    choose_reroute,
    choose_tau,
    data_identity,
    fit_learned_deferral,
    general_as_expert,
    general_partition,
    load_experts,
    operating_curve,
    outputs_of,
    require_same_images,
)


def entry_fields(stored: StoredCheckpoint, checkpoint: str, source: str) -> dict:
    """The fields of a bundle's model entry (``ModelEntry``) for the checkpoint ``stored``, which the bundle
    holds at ``checkpoint`` (relative to its root)."""
    meta = stored.meta
    return {"checkpoint": checkpoint, "model": meta.model.model_dump(mode="json"), "parameters": meta.parameters,
            "source": source, "weights_sha256": meta.weights_sha256}


def _copy_checkpoint(stored: StoredCheckpoint, root: Path, relative: str) -> dict:
    """Copy a checkpoint (weights + its ``.json``, which names the weights file) into ``root/relative/``;
    returns the entry fields of the model."""
    stem, meta = stored.stem, stored.meta
    target = root / relative
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stem.parent / meta.weights_file, target / meta.weights_file)
    shutil.copyfile(stem.with_suffix(".json"), target / f"{stem.name}.json")
    return entry_fields(stored, f"{relative}/{stem.name}", str(stem))


def _runs(generalist: Path, experts_run: Path) -> tuple[StoredCheckpoint, ExpertRun]:
    """The generalist's checkpoint and the expert run, each opened once, checked to be a generalist over the
    classes the experts cover."""
    gen = open_checkpoint(generalist)
    if gen.meta.kind == "expert":
        raise ConfigError(f"{generalist} holds an expert, not a generalist over every class",
                          fix="pass the run directory of: askexpert train generalist")
    run = open_expert_run(experts_run)
    if run.partition.class_names != gen.meta.class_names:
        raise ConfigError(f"the experts of {experts_run} cover other classes than the generalist",
                          fix="train both on the same dataset")
    return gen, run


DEFERRALS = ("confidence", FITTED_RULE)  # scored by the confidence rule, or by a rule fitted on validation


@dataclass(frozen=True)
class Operating:
    """Where a bundle starts on its curve and how its edge decides: the point (one of ``offload``, ``accuracy``,
    ``tau``; none: 30% offload), ``k``, the ``confidence`` and ``fallback`` rules, the ``deferral`` rule and the
    curve's ks."""

    offload: float | None = None
    accuracy: float | None = None
    tau: float | None = None
    k: int = 3
    confidence: str = "max-prob"
    fallback: str = "other"
    deferral: str = "confidence"  # or "learned": a rule fitted on validation (DEFERRALS)
    curve_ks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ServerChoice:
    """What the server holds and does with an offload: its design (``server``), whether the general model goes
    in the bundle, and re-routing (``reroute``, at most ``reroute_tries`` experts, under ``reroute_below``)."""

    server: str = "experts"  # or "general", "auto"
    include_general: bool = True
    reroute: str = "none"  # or "next", "general"
    reroute_tries: int = 2
    reroute_below: float | None = None


def build_system(generalist: Path, experts_run: Path, out: Path, operating: Operating = Operating(),
                 server: ServerChoice = ServerChoice(), *, archive: bool = False, name: str | None = None,
                 device: str = "auto", overwrite: bool = False) -> System:
    """Write the bundle of (generalist, experts of ``experts_run``) at one operating point into ``out``, with
    its operating curve over ``curve_ks`` (default: 1, 2, 3 and ``k``, within the number of classes).

    ``deferral``: ``confidence`` offloads the images whose ``confidence`` score is under tau (the paper's
    rule); ``learned`` fits a deferral rule on validation (:mod:`askexpert.routing.deferral`), which the
    bundle carries, and tau applies to its score (the curve then holds the one k it was fitted at).

    ``reroute``: ``next`` or ``general`` has the server re-ask the next expert of the generalist's ranking, or
    the general model, when the routed expert says "other" (:mod:`askexpert.contract.reroute`), at most
    ``reroute_tries`` experts an image, and under a confidence chosen on validation (``reroute_below``: given).

    ``server`` (``askexpert build-system --server``, whose default is ``auto``; here ``experts``, what the caller
    asked for): ``auto`` compares, on validation at the chosen operating point, the experts with their routing
    against the general model as the one expert on the same offloaded images, and builds the better (the
    experts on a tie); ``experts`` or ``general`` builds that design. The bundle records both figures and
    the reason (``design``). A general-model bundle serves it as its one expert (no "other", no re-routing),
    its operating point chosen again with it (max-prob where the experts' rule was learned)."""
    o, sv = _checked(operating, server)
    out = _fresh_out(Path(out), overwrite)
    gen_ckpt, run = _runs(generalist, experts_run)
    gen = outputs_of(gen_ckpt, "the generalist", device)
    experts = load_experts(run, str(experts_run), gen, device)
    general_set = None
    if sv.include_general and run.init is not None:
        general_out = outputs_of(open_checkpoint(run.init), "the general model", device)
        require_same_images(gen, general_out)
        general_set = general_as_expert(general_out, fit_temperature(general_out.val_logits, general_out.val_labels),
                                        len(gen_ckpt.meta.class_names))
    c = _choose(o, sv, gen, experts, general_set, run.partition, gen_ckpt.meta.class_names)
    curve = operating_curve(gen, c.experts, temperature=c.policy.temperature, ks=c.ks, confidence=c.confidence,
                            fallback=o.fallback, spec=gen_ckpt.meta.model.input, deferral=c.rule, general=general_set)
    staging = out.with_name(f".{out.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    gen_entry, expert_entries, general_entry = _model_entries(staging, gen_ckpt, c.partition, c.experts,
                                                              general_set if sv.include_general else None,
                                                              has_other=c.design.server == "experts")
    files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    gen_meta, policy = gen_ckpt.meta, c.policy
    manifest = SystemManifest(
        schema_version=SCHEMA_VERSION, name=name or out.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), askexpert_version=askexpert.__version__,
        classes=gen_meta.class_names, input=gen_meta.model.input, data=data_identity(gen), partition=c.partition,
        routing=RoutingSpec(temperature=policy.temperature, tau=policy.tau, k=policy.k, confidence=policy.confidence,
                            fallback=o.fallback, operating_point=c.point, deferral=c.rule_spec, reroute=c.reroute),
        generalist=gen_entry, experts=expert_entries, general=general_entry, curve=curve, design=c.design,
        files=files,
    )
    (staging / SYSTEM_FILE).write_text(manifest.model_dump_json(indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(out)
    if archive:
        archive_bundle(out)
    return System(out, manifest, sha256_file(out / SYSTEM_FILE))  # its files were hashed above


def _checked(o: Operating, sv: ServerChoice) -> tuple[Operating, ServerChoice]:
    """The groups, refused before any work where a rule is unknown; no point named: 30% offload."""
    if sv.server not in ("auto", "experts", "general"):
        raise ConfigError(f"unknown server design {sv.server!r}", fix="use --server auto, experts or general")
    if o.deferral not in DEFERRALS:
        raise ConfigError(f"unknown deferral {o.deferral!r}", fix="use --deferral confidence or --deferral learned")
    if sv.reroute not in ("none", "next", "general"):
        raise ConfigError(f"unknown re-routing {sv.reroute!r}", fix="use --reroute none, next or general")
    if sv.reroute != "none":
        Reroute(sv.reroute_tries, sv.reroute, sv.reroute_below or 0.0)
    if o.offload is None and o.accuracy is None and o.tau is None:
        o = replace(o, offload=0.3)
    return o, sv


@dataclass(frozen=True)
class _Choice:
    """What build_system chose on validation: the design, its experts and partition, the policy at the point,
    the deferral rule (and its spec), re-routing, the curve's ks."""

    design: DesignChoice
    experts: ExpertSet
    partition: Partition
    policy: RoutingPolicy
    point: OperatingPoint
    rule: DeferralModel | None
    rule_spec: DeferralSpec | None
    reroute: RerouteSpec | None
    ks: list[int]
    confidence: str  # the confidence rule the curve is drawn with (max-prob where a general design replaced learned)


def _choose(o: Operating, sv: ServerChoice, gen, experts: ExpertSet, general_set: ExpertSet | None,
            partition: Partition, class_names: list[str]) -> _Choice:
    """The operating point, the deferral rule, re-routing and the server's design, each chosen on validation."""
    t_gen = fit_temperature(gen.val_logits, gen.val_labels)
    k = min(o.k, len(class_names))
    rule, rule_spec = None, None
    if o.deferral == FITTED_RULE:
        rule, fitted_on = fit_learned_deferral(gen, experts, temperature=t_gen, k=k, fallback=o.fallback)
        rule_spec = DeferralSpec(**rule.to_dict(), fitted_on=fitted_on)
    point_of = dict(temperature=t_gen, k=k, fallback=o.fallback, offload=o.offload, accuracy=o.accuracy, tau=o.tau)
    confidence = o.confidence
    policy, point = choose_tau(gen, experts, confidence=confidence, deferral=rule, **point_of)
    reroute = None
    if sv.reroute != "none":
        reroute = choose_reroute(gen, experts, policy, tries=sv.reroute_tries, to=sv.reroute, general=general_set,
                                 below=sv.reroute_below)
    design = choose_design(sv.server, gen, experts, general_set, replace(
        policy, reroute=reroute.rule() if reroute is not None else None))
    if design.server == "general":
        experts, partition, reroute, rule, rule_spec = general_set, general_partition(class_names), None, None, None
        confidence = "max-prob" if confidence_rule(confidence).fitted else confidence
        policy, point = choose_tau(gen, experts, confidence=confidence, **point_of)
    ks = sorted({min(x, len(class_names)) for x in (*(o.curve_ks or (1, 2, 3)), o.k)})
    return _Choice(design, experts, partition, policy, point, rule, rule_spec, reroute, ks, confidence)


def _fresh_out(out: Path, overwrite: bool) -> Path:
    """``out``, emptied when ``overwrite`` allows; refused when it holds something and does not."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty", fix="choose another --out, or pass --overwrite")
        shutil.rmtree(out)
    return out


def _model_entries(staging: Path, gen_ckpt: StoredCheckpoint, partition: Partition, experts: ExpertSet,
                   general: ExpertSet | None, *,
                   has_other: bool) -> tuple[GeneralistEntry, list[ExpertEntry], GeneralEntry | None]:
    """Every model of the bundle written into ``staging`` (the generalist also in ONNX), as manifest entries."""
    from askexpert.models.onnx_export import export_onnx

    export_onnx(gen_ckpt, staging / "generalist.onnx")
    gen_entry = GeneralistEntry(onnx="generalist.onnx", **_copy_checkpoint(gen_ckpt, staging, "generalist"))
    expert_entries = [
        ExpertEntry(id=str(e), classes=list(subset), class_names=partition.names(e), temperature=temp,
                    has_other=has_other, **_copy_checkpoint(open_checkpoint(stem), staging, f"experts/expert-{e}"))
        for e, (subset, stem, temp) in enumerate(zip(partition.experts, experts.checkpoints, experts.temperatures,
                                                      strict=True))]
    general_entry = None
    if general is not None:
        general_entry = GeneralEntry(temperature=general.temperatures[0],
                                     **_copy_checkpoint(open_checkpoint(general.checkpoints[0]), staging, "general"))
    return gen_entry, expert_entries, general_entry


def archive_bundle(root: Path) -> Path:
    """``ROOT.tar.gz`` of the bundle directory (what ``askexpert serve`` and ``edge`` open as they are)."""
    root = Path(root)
    target = root.with_name(root.name + ".tar.gz")
    with tarfile.open(target, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return target
