"""Models: presets over timm, full model specs, parameter and FLOP counts, safetensors checkpoints."""

from askexpert.models.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    StoredCheckpoint,
    load_checkpoint,
    open_checkpoint,
    read_meta,
    save_checkpoint,
)
from askexpert.models.factory import (
    ModelSpec,
    build_model,
    count_parameters,
    explicit_attention,
    flops_per_image,
    resolve_spec,
)
from askexpert.models.presets import PRESETS, Preset

__all__ = [
    "Checkpoint", "CheckpointMeta", "load_checkpoint", "read_meta", "save_checkpoint",
    "StoredCheckpoint", "open_checkpoint", "ModelSpec",
    "build_model", "count_parameters", "explicit_attention", "flops_per_image", "resolve_spec", "PRESETS", "Preset",
]  # fmt: skip
