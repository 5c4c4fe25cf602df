"""What a model costs: parameters and FLOPs per image, for presets and checkpoints."""

from __future__ import annotations

import torch

from askexpert.config import ModelConfig
from askexpert.models.factory import build_model, count_parameters, flops_per_image, resolve_spec
from askexpert.models.presets import Preset


def describe_preset(preset: Preset, *, num_classes: int = 10) -> dict:
    """Parameter count and FLOPs per image of a preset, built without pretrained weights."""
    spec, _ = resolve_spec(ModelConfig(name=preset.name, pretrained=False), num_classes=num_classes,
                           mean=(0.5,) * preset.channels, std=(0.5,) * preset.channels)
    with torch.device("cpu"):
        model = build_model(spec, pretrained=False)
    return {
        "input": f"{spec.input.channels}x{spec.input.size}x{spec.input.size}",
        "parameters": count_parameters(model),
        "flops": flops_per_image(model, spec),
    }
