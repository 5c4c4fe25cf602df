"""The contract between build time and run time: ``system.json``, the partition and the input spec.

Pydantic only (no torch, no dataset code), so the edge device, the server and the training code all
read the same definitions. ``system.json`` is schema-versioned; a bundle whose version this code does
not know is refused with the fix named. Version 2 added the operating curve (``curve``) and a
budget's prediction (``operating_point.predicted``); version 3 the learned deferral rule
(``routing.deferral``, with ``routing.confidence: learned``); version 4 re-routing on the server
(``routing.reroute``) and the server design chosen on validation (``design``, ``experts[].has_other``). Older
versions still load: a version-1 ``system.json`` without a curve, at its
one tau; a version-2 one with its confidence rule; a version-3 one without re-routing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from askexpert.contract.confidence import Confidence, rule
from askexpert.contract.labels import Fallback
from askexpert.contract.reroute import Reroute
from askexpert.errors import ConfigError

SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # what this code loads: 1 has no operating curve, 2 no learned deferral, 3 no
# reroute, 4 no full-offload accuracy on its curve
SYSTEM_FILE = "system.json"


class InputSpec(BaseModel):
    """What a model expects: channels, square size, and the normalisation of its inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values each")
        return self


DEFAULT_MIN_SIZE = 2  # fewest classes a computed partition gives an expert (a one-class expert is trivially right)


class Partition(BaseModel):
    """Expert subsets over a dataset's classes (``experts[e]`` lists class ids, ascending)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    class_names: list[str]
    experts: list[list[int]]
    overlap: bool = False
    details: dict = Field(default_factory=dict)

    def names(self, e: int) -> list[str]:
        return [self.class_names[c] for c in self.experts[e]]

    def check(self) -> Partition:
        """Every class covered, no empty expert, ids in range, no duplicates inside an expert."""
        n = len(self.class_names)
        covered = set()
        for e, classes in enumerate(self.experts):
            if not classes:
                raise ConfigError(f"partition: expert {e} has no classes", fix="give every expert classes")
            if len(set(classes)) != len(classes) or not all(0 <= c < n for c in classes):
                raise ConfigError(f"partition: expert {e} lists invalid or repeated class ids {classes}",
                                  fix=f"use class ids 0..{n - 1} (or class names), each once per expert")
            covered |= set(classes)
        missing = sorted(set(range(n)) - covered)
        if missing:
            raise ConfigError(f"partition leaves classes {[self.class_names[c] for c in missing]} to no expert",
                              fix="assign every class to an expert")
        return self

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Partition:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"partition file {path} does not exist", fix="create one with: askexpert partition")
        try:
            return cls.model_validate(json.loads(path.read_text())).check()
        except (json.JSONDecodeError, ValidationError) as err:
            raise ConfigError(f"{path} is not a partition file ({str(err).splitlines()[0]})",
                              fix="create one with: askexpert partition") from err

    def table(self) -> list[tuple[int, str]]:
        return [(e, ", ".join(self.names(e))) for e in range(len(self.experts))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prediction(_Strict):
    """What the cost model expects at an operating point on one edge device and link (build-system with a
    latency or energy budget): from the measured parts it names."""

    device: str = Field(description="the edge device it is for (an edge speed profile, or host)")
    link: str = Field(description="the link it is for")
    load: int = Field(ge=0, description="competing clients on the server while its parts were measured")
    p95_ms: float = Field(description="predicted p95 latency an image (ms)")
    mean_ms: float
    edge_mj: float = Field(description="predicted edge energy an image (mJ): compute, waiting and radio")
    edge_ms: float = Field(description="the generalist's median time an image on the device (measured)")
    offload_ms: float = Field(description="an offload's median time on the socket, without the link (measured)")
    link_ms: float = Field(description="the link's round trip and serialisation for one offload (modelled)")


class OperatingPoint(_Strict):
    """How tau was chosen on validation, and what it gave there."""

    target: Literal["offload", "accuracy", "tau", "p95-latency", "edge-energy"]
    value: float = Field(description="target offload share (0..1), target accuracy (%), the given tau, or the "
                         "budget: p95 latency (ms) or edge energy (mJ) an image")
    val_offload_rate: float = Field(description="offload rate on validation at this tau (%)")
    val_accuracy: float = Field(description="collaborative accuracy on validation at this tau (%)")
    predicted: Prediction | None = None


class CurvePoint(_Strict):
    """One point of the operating curve: a (tau, k) and what it gives on validation."""

    tau: float
    k: int = Field(ge=1)
    offload_rate: float = Field(description="validation images offloaded (%)")
    accuracy: float = Field(description="collaborative accuracy on validation (%)")
    offloaded_accuracy: float | None = Field(description="accuracy on the offloaded validation images (%); none "
                                             "when nothing is offloaded")
    expert_share: list[float] = Field(description="each expert's share of the offloaded images (0..1)")


class OperatingCurve(_Strict):
    """Where the system can run: for a grid of tau and each k offered, validation offload, accuracy and
    load per expert, and the bytes one offload moves. The edge's controllers move along it at run time."""

    points: list[CurvePoint]
    up_bytes: int = Field(description="request body of one offloaded image (bytes)")
    down_bytes: int = Field(description="response of one image, as the server sends it with topk 3 (bytes)")
    general_accuracy: float | None = Field(default=None, description="full offload: the general model alone on "
                                           "every validation image (%); none without a general model (schema 5 on)")

    def for_k(self, k: int) -> list[CurvePoint]:
        """The points of one k, by rising offload rate."""
        return sorted((p for p in self.points if p.k == k), key=lambda p: (p.offload_rate, -p.tau))

    @property
    def ks(self) -> list[int]:
        return sorted({p.k for p in self.points})


class DeferralSpec(_Strict):
    """A learned deferral rule (``askexpert.routing.deferral``): a multinomial logistic regression from the
    edge's own features to the outcome of an offload (-1, 0, +1), fitted on validation."""

    features: list[str] = Field(description="the features, in order (checked against the code that computes them)")
    mean: list[float] = Field(description="each feature's mean on validation (standardisation)")
    scale: list[float] = Field(description="each feature's standard deviation on validation")
    weights: list[list[float]] = Field(description="[features + 1][3]: the weights of outcomes -1, 0, +1, then bias")
    num_experts: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    k: int = Field(ge=1, description="the router's k it was fitted at (its features read the top-k mass)")
    l2: float = Field(ge=0, description="the L2 strength chosen by 5-fold cross-validation on validation")
    fitted_on: int = Field(default=0, ge=0, description="validation images it was fitted on")


class RerouteSpec(_Strict):
    """Re-routing on the server (:mod:`askexpert.contract.reroute`): when the routed expert says "other" (or
    answers under ``below``), the server asks the next expert of the generalist's ranking or the general model,
    within the request, at most ``tries`` experts in all."""

    tries: int = Field(ge=1, description="experts asked at most, the routed one included")
    to: Literal["next", "general"] = "next"
    below: float = Field(0.0, ge=0, le=1, description="re-ask under this confidence too (0: on 'other' only; "
                                                      "chosen on validation)")
    validation: dict[str, float] = Field(default_factory=dict, description="what it gave on validation when chosen")

    def rule(self) -> Reroute:
        return Reroute(self.tries, self.to, self.below)


class RoutingSpec(_Strict):
    temperature: float = Field(gt=0, description="the generalist's softmax temperature (fitted on validation)")
    tau: float = Field(ge=0, description="confidence threshold: below it an image is offloaded")
    k: int = Field(ge=1, description="Top-k classes of the generalist that choose the expert")
    confidence: Confidence = "max-prob"
    fallback: Fallback = "other"
    operating_point: OperatingPoint
    deferral: DeferralSpec | None = Field(default=None, description="the learned rule behind confidence 'learned'")
    reroute: RerouteSpec | None = Field(default=None, description="re-routing on the server (schema 4 on)")

    @model_validator(mode="after")
    def _check(self) -> RoutingSpec:
        fitted = rule(self.confidence).fitted
        if fitted and self.deferral is None:
            raise ValueError(f"confidence {self.confidence!r} needs its fitted rule (routing.deferral)")
        if self.deferral is not None and not fitted:
            raise ValueError(f"routing.deferral is a fitted rule's, and confidence {self.confidence!r} is not fitted: "
                             "only a fitted rule carries one")
        if self.deferral is not None and self.deferral.k != self.k:
            raise ValueError(f"the learned rule was fitted at k {self.deferral.k}, the routing says k {self.k}")
        return self


class ModelEntry(_Strict):
    """One model file of the bundle: its checkpoint (``.safetensors`` + ``.json`` metadata) and spec."""

    checkpoint: str = Field(description="stem of the checkpoint inside the bundle (no suffix)")
    model: dict[str, Any] = Field(description="the ModelSpec that rebuilds it (timm name, kwargs, input)")
    parameters: int
    source: str = Field(description="where it was trained (run directory at build time)")
    weights_sha256: str

    @property
    def input_shape(self) -> list[int]:
        """[C, H, W] of the uint8 images the model takes (its spec's input)."""
        spec = self.model["input"]
        return [spec["channels"], spec["size"], spec["size"]]


class ExpertEntry(ModelEntry):
    id: str
    classes: list[int]
    class_names: list[str]
    temperature: float = Field(gt=0, description="softmax temperature of its answers (fitted on validation)")
    has_other: bool = Field(True, description="its last output is 'other' (false: a general model serving as "
                                              "the one expert, schema 4 on)")


class DesignChoice(_Strict):
    """Which server design the bundle holds (``build-system --server``), and the validation figures behind it:
    the experts with their routing, or the general model as the one expert, at the same operating point."""

    server: Literal["experts", "general"]
    chosen_by: Literal["validation", "user"]
    experts_val_accuracy: float | None = None
    general_val_accuracy: float | None = None
    reason: str


class GeneralistEntry(ModelEntry):
    onnx: str = Field(description="the ONNX graph (uint8 images in, logits out) the edge runs")


class GeneralEntry(ModelEntry):
    temperature: float = Field(gt=0)


class DataIdentity(_Strict):
    """Which images every model of the system was calibrated and evaluated on."""

    name: str
    config: dict[str, Any]
    val_images: int
    test_images: int
    val_labels_sha256: str
    test_labels_sha256: str


class SystemManifest(_Strict):
    """``system.json``: everything the edge and the server need to answer, and the hash of every file."""

    schema_version: int
    name: str
    created: str
    askexpert_version: str
    classes: list[str]
    input: InputSpec = Field(description="the generalist's input: raw uint8 images are sent as they are")
    data: DataIdentity
    partition: Partition
    routing: RoutingSpec
    generalist: GeneralistEntry
    experts: list[ExpertEntry]
    general: GeneralEntry | None = None
    curve: OperatingCurve | None = Field(default=None, description="the operating curve (schema 2 on; none in 1)")
    design: DesignChoice | None = Field(default=None, description="the server design and why (schema 4 on)")
    files: dict[str, str] = Field(description="path inside the bundle -> sha256 of the file")

    @model_validator(mode="after")
    def _check(self) -> SystemManifest:
        if len(self.experts) != len(self.partition.experts):
            raise ValueError(f"{len(self.experts)} experts but the partition has {len(self.partition.experts)}")
        for e, entry in enumerate(self.experts):
            if entry.classes != self.partition.experts[e]:
                raise ValueError(f"expert {entry.id} serves {entry.classes}, the partition says "
                                 f"{self.partition.experts[e]}")
        if self.partition.class_names != self.classes:
            raise ValueError("the partition's classes differ from the system's")
        return self

    @property
    def subsets(self) -> list[list[int]]:
        return [list(e.classes) for e in self.experts]

    @property
    def expert_temperatures(self) -> list[float]:
        return [e.temperature for e in self.experts]
