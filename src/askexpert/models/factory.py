"""Model specs and construction. A :class:`ModelSpec` holds everything needed to rebuild a model
(timm name, full keyword arguments, input spec), so a checkpoint alone can recreate its model."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, ConfigDict

from askexpert.config import ModelConfig
from askexpert.contract.bundle import sha256_file
from askexpert.data.transforms import InputSpec
from askexpert.errors import ModelError
from askexpert.models import collapse as _registered_collapse  # noqa: F401  (registers askexpert_collapsed)
from askexpert.models import vit as _registered_vits  # noqa: F401  (registers askexpert's timm models)
from askexpert.models.presets import PRESETS


class ModelSpec(BaseModel):
    """A model, fully specified: ``timm.create_model(timm_name, **kwargs)`` rebuilds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # what the user asked for: a preset or a timm model name
    timm_name: str
    kwargs: dict[str, Any]
    input: InputSpec
    pretrained_source: str | None = None  # where the starting weights came from, if pretrained
    pretrained_file: str | None = None  # the local file they were read from (model.pretrained_file, or the HF cache)
    pretrained_sha256: str | None = None  # and its sha256

    @property
    def num_classes(self) -> int:
        return int(self.kwargs["num_classes"])


def _unknown(name: str) -> ModelError:
    choices = list(PRESETS) + timm.list_models()
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ModelError(
        f"unknown model '{name}'",
        fix=f"{hint}use a preset ({', '.join(PRESETS)}) or a timm model name (askexpert models --timm)",
    )


def _file_classes(file: str, classifier: str | None) -> int | None:
    """Rows of the classifier in a weights file (timm keeps it only when they equal the model's classes)."""
    if not classifier:
        return None
    key = f"{classifier}.weight"
    try:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:
                return f.get_slice(key).get_shape()[0] if key in f.keys() else None  # noqa: SIM118
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        return int(state[key].shape[0]) if key in state else None
    except Exception:  # unreadable here: timm's own loader says what is wrong with it
        return None


def _create(timm_name: str, pretrained: bool, kwargs: dict[str, Any], file: str | None = None) -> torch.nn.Module:
    overlay = {}
    if pretrained and file:
        pcfg = timm.get_pretrained_cfg(timm_name)
        overlay = {"file": file}
        classes = _file_classes(file, pcfg.classifier if pcfg is not None else "head")
        if classes is not None:  # the file's head: kept when it fits the model, replaced when it does not
            overlay["num_classes"] = classes
        overlay = {"pretrained_cfg_overlay": overlay}
    try:
        return timm.create_model(timm_name, pretrained=pretrained, **overlay, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {timm_name} rejected its arguments {kwargs}: {err}",
                         fix="remove or correct model.kwargs") from err
    except Exception as err:
        if not pretrained:
            raise ModelError(f"cannot build {timm_name} with {kwargs}: {err}",
                             fix="correct model.kwargs") from err
        if file:
            raise ModelError(f"cannot load the weights of {file} into {timm_name} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no detail'})",
                             fix="give model.pretrained_file weights of this architecture (safetensors or a timm "
                             "checkpoint), or the model name they were saved from") from err
        raise ModelError(
            f"cannot fetch pretrained weights for {timm_name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})",
            fix="connect to the network, or fill the Hugging Face cache (HF_HOME) on a machine that has "
            "one, or train from scratch with model.pretrained=false",
        ) from err


def resolve_spec(cfg: ModelConfig, *, num_classes: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> tuple[ModelSpec, bool]:
    """Turn a config into a full :class:`ModelSpec` for a dataset; returns ``(spec, pretrained)``.

    Normalisation comes from the model's pretrained config when it starts from pretrained weights,
    and from the dataset's statistics (adapted to the model's channel count) otherwise. A dataset whose
    channel count differs from the model's is adapted at input time (see ``data.transforms``).
    """
    preset = PRESETS.get(cfg.name)
    if preset is not None:
        timm_name, kwargs, pretrained = preset.timm_name, dict(preset.kwargs), preset.pretrained
    elif timm.is_model(cfg.name):
        timm_name, kwargs, pretrained = cfg.name, {}, False
    else:
        raise _unknown(cfg.name)
    kwargs.update(cfg.kwargs)
    kwargs["num_classes"] = num_classes
    pretrained = cfg.pretrained if cfg.pretrained is not None else pretrained
    if cfg.pretrained_file:
        if cfg.pretrained is False:
            raise ModelError("model.pretrained_file is set but model.pretrained is false",
                             fix="drop one of them: pretrained_file starts from that file's weights")
        pretrained = True
    pcfg = timm.get_pretrained_cfg(timm_name)
    published = pcfg is not None and bool(pcfg.hf_hub_id or pcfg.url)
    default_size = pcfg.input_size if pcfg is not None else (3, 224, 224)
    in_chans = int(kwargs.get("in_chans", default_size[0]))
    size = kwargs.get("img_size", default_size[-1])
    size = int(size if isinstance(size, int) else size[0])
    if pretrained and published:  # the weights expect the statistics they were trained with
        mean_, std_ = tuple(pcfg.mean), tuple(pcfg.std)
    else:
        mean_, std_ = mean, std
    if len(mean_) != in_chans:  # e.g. grayscale statistics for an RGB model: replicate or average
        mean_ = tuple([sum(mean_) / len(mean_)] * in_chans)
        std_ = tuple([sum(std_) / len(std_)] * in_chans)
    source = f"timm:{timm_name}" + (f" ({pcfg.hf_hub_id or pcfg.url})" if pcfg is not None else "")
    file = _weights_file(cfg.pretrained_file, pcfg) if pretrained else None
    if cfg.pretrained_file:
        source = f"file {file}"
    elif file is not None:
        source += f", from the Hugging Face cache {file}"
    spec = ModelSpec(
        name=cfg.name, timm_name=timm_name, kwargs=kwargs,
        input=InputSpec(channels=in_chans, size=size, mean=mean_, std=std_),
        pretrained_source=source if pretrained else None,
        pretrained_file=str(file) if file else None, pretrained_sha256=sha256_file(file) if file else None,
    )
    return spec, pretrained


def _weights_file(pretrained_file: str | None, pcfg) -> Path | None:
    """The local file the starting weights come from: ``model.pretrained_file``, or timm's published
    weights when the Hugging Face cache already holds them (then no network is needed); None: let timm
    download them."""
    if pretrained_file:
        path = Path(pretrained_file).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"model.pretrained_file {path} does not exist",
                             fix="point it at a local weights file (safetensors or a timm checkpoint)")
        return path
    if pcfg is None or not pcfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(pcfg.hf_hub_id, name)
        if isinstance(cached, str):
            return Path(cached)
    return None


def build_model(spec: ModelSpec, *, pretrained: bool = False) -> torch.nn.Module:
    """Create the model of ``spec``; with ``pretrained``, start from its weights file (checked against
    the sha256 recorded when the spec was made) or from timm's published weights."""
    if not timm.is_model(spec.timm_name):
        raise _unknown(spec.timm_name)
    if pretrained and spec.pretrained_file:
        path = Path(spec.pretrained_file)
        if not path.is_file() or sha256_file(path) != spec.pretrained_sha256:
            raise ModelError(f"the pretrained weights {path} are missing or changed since the run was configured "
                             f"(sha256 {spec.pretrained_sha256})", fix="restore the file, or start a new run")
    return _create(spec.timm_name, pretrained, dict(spec.kwargs), spec.pretrained_file if pretrained else None)


@contextmanager
def explicit_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run timm's attention layers as explicit matrix products (softmax(QK^T)V) instead of the fused
    ``scaled_dot_product_attention`` kernel while inside, then restore each layer's setting.

    The arithmetic is the same. Two uses: the FLOP counter cannot see inside some fused kernels, and
    on CPUs the fused kernel's bfloat16 backward is several times slower than bfloat16 matrix
    products (measured in BENCHMARKS.md), so bf16 training on a CPU runs explicit attention.
    """
    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        if enabled:
            for m, _ in fused:
                m.fused_attn = False
        yield
    finally:
        for m, flag in fused:
            m.fused_attn = flag


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_image(model: torch.nn.Module, spec: ModelSpec) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on one image.

    Counted by ``torch.utils.flop_counter`` on the real model (matrix products and convolutions,
    which dominate a ViT); element-wise operations are not counted. timm's fused attention kernels
    are switched to their explicit form while counting, since the counter cannot see inside some
    fused kernels (the CPU one among them); the arithmetic is the same.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, spec.input.channels, spec.input.size, spec.input.size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with explicit_attention(model), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
