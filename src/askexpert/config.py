"""Validated run configurations: YAML in, YAML out, command-line overrides.

A run is described by a :class:`RunConfig` (data, model, training). Configs come from YAML files,
are checked by pydantic (unknown keys are errors, so a typo never passes silently), and take
``section.key=value`` overrides from the command line. Every run directory keeps its resolved config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from askexpert.errors import ConfigError

SEED_ENV = "ASKEXPERT_SEED"  # the default train.seed of every run in this process (a config or --set wins)


def _default_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{SEED_ENV}={raw!r} is not a whole number",
                          fix=f"set {SEED_ENV} to an integer seed (or unset it for seed 0)") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset, where it lives, and how the validation split is carved out of training data."""

    name: str = Field("fashion-mnist", description="fashion-mnist | cifar10 | cifar100 | imagefolder:PATH")
    root: Path | None = Field(None, description="only directory searched for the files (default: usual places)")
    download: bool = Field(True, description="download from the canonical source when the files are missing")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of training data held out, per class")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="imagefolder without test/: share held out")
    split_seed: int = Field(0, description="seed of the validation (and image-folder test) split")
    train_subset: int | None = Field(None, gt=0, description="stratified subset of the training split")
    val_subset: int | None = Field(None, gt=0, description="stratified subset of the validation split")
    test_subset: int | None = Field(None, gt=0, description="stratified subset of the test split")
    flip: bool | None = Field(None, description="whether a mirrored image keeps its class, so augment: auto may "
                              "flip: default true for fashion-mnist and cifar, false for image folders (digits, "
                              "text and signs change meaning when mirrored)")


class ModelConfig(_Strict):
    """A preset name (see ``askexpert models``) or any timm model name, with keyword overrides."""

    name: str = "vit-edge-28"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to timm.create_model")
    pretrained: bool | None = Field(None, description="load pretrained weights (default: the preset's)")
    pretrained_file: str | None = Field(None, description="start from the timm weights in this local file "
                                        "(safetensors, or a timm/PyTorch checkpoint); no hub needed")


class TrainConfig(_Strict):
    """One training loop's settings: AdamW, linear warm-up then cosine decay, label smoothing."""

    epochs: int = Field(20, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(2e-3, gt=0.0, description="peak learning rate")
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="final lr as a share of the peak")
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                   description="share of the run's steps spent warming the lr up (any run length)")
    warmup_epochs: float | None = Field(None, ge=0.0, description="warm-up in epochs instead of warmup_fraction; "
                                        "never more than a quarter of the run (a warning says when it is cut)")
    weight_decay: float = Field(0.05, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    augment: Literal["auto", "none", "flip", "crop", "crop-flip", "rrc", "rrc-flip"] = Field(
        "auto", description="auto: from the data (see askexpert datasets NAME); crop: shifts; rrc: random "
        "resized crops; -flip: also mirror half the images")
    amp: bool = Field(True, description="mixed precision: bfloat16 on CUDA and on CPUs with native bfloat16 "
                      "(AMX or AVX512-BF16; float32 on other CPUs); false: float32 everywhere")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: torch's choice)")
    seed: int = Field(default_factory=_default_seed, description="weights, data order, augmentation and "
                      f"dropout; default 0, or ${SEED_ENV} (how the suite's floors were measured over seeds)")
    num_workers: int = Field(0, ge=0, description="decoding workers for image folders")
    eval_batch_size: int = Field(512, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


class StageConfig(_Strict):
    """One stage of specialist training: how much of the budget it takes and what its batches hold."""

    fraction: float = Field(gt=0.0, le=1.0, description="share of the expert's image budget spent here")
    labels: Literal["subset", "all"] = Field(
        "subset", description="subset: targets are the subset's classes plus 'other'; all: every class with its "
        "true label, through a full-width head (only as the first stages: the head is cut to subset + 'other' "
        "where they end)")
    out_share: float = Field(0.0, ge=0.0, lt=1.0, description="share of each batch from outside the subset")
    focus: float = Field(0.0, ge=0.0, le=1.0,
                         description="0: in-subset images drawn uniformly; 1: in proportion to how hard the "
                         "general model finds them")
    lr_scale: float = Field(1.0, gt=0.0, description="multiplier on the run's learning-rate schedule in this stage")
    lwf: float = Field(0.0, ge=0.0, le=1.0, description="weight of distillation from the model as it stood when "
                       "the expert's first stage of another kind ended (Learning without Forgetting), its answer "
                       "collapsed onto subset + 'other' (log-sum-exp of the other classes)")
    freeze_stem: bool = Field(False, description="keep the patch embedding (stem) fixed in this stage")
    freeze_blocks: int = Field(0, ge=0, description="keep the first N transformer blocks fixed in this stage")

    @field_validator("lwf")
    @classmethod
    def _lwf(cls, v: float, info) -> float:
        if v > 0 and info.data.get("labels") == "all":
            raise ValueError("a stage with labels: all has nothing earlier to distil from")
        return v


STRATEGIES = ("general", "static", "static-other", "progressive")
INIT_FROM = ("general", "scratch", "pretrained")


class ExpertsConfig(_Strict):
    """How the experts of a run are trained. Strategies share the medium model and the image budget."""

    strategy: Literal["general", "static", "static-other", "progressive"] = Field(
        "progressive", description="general: the all-class general model itself; static: subset-only batches; "
        "static-other: a fixed share of out-of-subset images labelled 'other' throughout (Hinton et al., 2015); "
        "progressive: the stages below")
    init_from: Literal["general", "scratch", "pretrained"] = Field(
        "general", description="the experts' starting weights: general: the trained general model of "
        "experts.init (its head cut to subset + 'other'); scratch: random weights of that architecture from "
        "experts.init_seed, bit-identical for every strategy; pretrained: timm's weights of that architecture "
        "(model.pretrained_file, or the Hugging Face cache)")
    init_seed: int | None = Field(None, description="seed of the scratch weights (default: train.seed)")
    head: Literal["cut", "collapse"] = Field(
        "cut", description="where training narrows to subset + 'other': cut: the all-class head is cut to the "
        "subset's rows plus an 'other' row made from the rest, and a fresh optimiser trains the cut model; "
        "collapse: the all-class head is kept and answers as its subset's logits plus the log-sum-exp of the "
        "others' ('other' gets exactly the probability outside the subset), one model and one optimiser "
        "throughout (models.collapse)")
    partition: Path | None = Field(None, description="partition file (askexpert partition)")
    init: Path | None = Field(None, description="the general model the experts start from (a run directory): its "
                              "architecture and data always, its weights with init_from: general")
    passes: float = Field(6.0, gt=0.0, description="image budget per expert, in passes over its subset")
    other_share: float = Field(0.3, ge=0.0, lt=1.0, description="static-other: share of each batch from outside "
                               "the subset, labelled 'other'")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(fraction=1 / 3, out_share=0.5), StageConfig(fraction=1 / 3, out_share=0.2),
                                 StageConfig(fraction=1 / 3, out_share=0.05)],
        description="progressive only; static is one stage of subset-only batches",
    )
    distill: float = Field(0.0, ge=0.0, le=1.0, description="weight of distillation from the general model")
    distill_temperature: float = Field(2.0, gt=0.0)
    hard_negatives: float = Field(0.0, ge=0.0, le=1.0,
                                  description="0: out-of-subset images drawn uniformly; 1: in proportion to how "
                                  "often the generalist confuses their class with the subset")
    router: Path | None = Field(
        None, description="the edge generalist whose routing the experts will serve (a run directory). With it, "
        "progressive training draws what that router will send: in-subset images by the generalist's "
        "uncertainty (focus) and out-of-subset images by the generalist's probability on the subset "
        "(hard_negatives), image by image. Without it: the general model's errors and class confusion")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[StageConfig]) -> list[StageConfig]:
        if not v:
            raise ValueError("needs at least one stage")
        total = sum(s.fraction for s in v)
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"stage fractions must sum to 1 (they sum to {total:.3f})")
        kinds = [s.labels for s in v]
        if "subset" in kinds and "all" in kinds[kinds.index("subset"):]:
            raise ValueError("stages with labels: all must come first (the head is cut once, where they end)")
        if kinds[-1] == "all":
            raise ValueError("the last stage must train the subset + 'other' head (labels: subset)")
        return v


class RunConfig(_Strict):
    """Everything needed to reproduce one training run."""

    name: str = Field("generalist", pattern=r"^[A-Za-z0-9_.\-]+$")
    output_dir: Path = Path("runs")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    experts: ExpertsConfig | None = None

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming every invalid field, what is wrong with it and the value given."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        given = e.get("input")
        shown = "" if isinstance(given, dict) or e["type"] == "missing" else f" (got {given!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"invalid config {source}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> ``(["train", "epochs"], 3)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"malformed override '{text}'", fix="write overrides as section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from err
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': {part} is not a section", fix="check the key path")
            node = child
        node[path[-1]] = value
    return data


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def find_config(path: str | Path) -> Path:
    """A config file by path, or by the name of one shipped with askexpert (``generalist-fmnist``)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (PACKAGED_CONFIGS / path.name, PACKAGED_CONFIGS / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {path} does not exist",
                      fix=f"check the path, or name a shipped config: {shipped}")


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML file, with a one-line error for a missing or malformed file."""
    path = find_config(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}",
                          fix="correct the YAML syntax") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}",
                          fix="write it as key: value pairs")
    return data


def validate(model: type[BaseModel], data: dict, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source),
                          fix="correct the listed keys (see configs/ for examples)") from err


def load_run_config(path: Path | None = None, overrides: list[str] | None = None,
                    base: dict | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from ``base`` defaults, a YAML file and overrides, in that order."""
    data: dict = copy.deepcopy(base or {})  # overrides write into nested sections: never into the caller's
    source = "(defaults)"
    if path is not None:
        data = _deep_merge(data, read_yaml(path))
        source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " with overrides " + " ".join(overrides)
    return validate(RunConfig, data, source)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
