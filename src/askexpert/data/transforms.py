"""From ``uint8`` batches to model inputs: augmentation, channel and size adaptation, normalisation.

All of it runs on whole batches on the model's device, so a CPU-only machine spends its two cores
on the model, not on per-image Python transforms. Random parameters come from an explicit
``torch.Generator`` (on the CPU), so a seeded run draws the same augmentations on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from askexpert.contract.schema import InputSpec  # noqa: F401 (the spec lives in the torch-free contract)

AUGMENTATIONS = ("none", "flip", "crop", "crop-flip", "rrc", "rrc-flip")
"""none; flip (mirror half the images); crop (shift: pad by size/8, crop back); rrc (random resized crop);
the ``-flip`` forms also mirror half the images. Mirroring is wrong where it changes the class (digits,
text, arrows), so only the built-in data sets of natural images flip by default."""


def _crop_flip(x: torch.Tensor, generator: torch.Generator | None, flip_images: bool = True) -> torch.Tensor:
    """Zero-pad by size/8, take a random crop of the original size, flip half of the images (if asked)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    if not flip_images:
        flip = torch.zeros_like(flip)
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = x.device
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded[batch, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _resized_crop_flip(x: torch.Tensor, generator: torch.Generator | None,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_images: bool = True) -> torch.Tensor:
    """Random resized crop (Inception-style area and aspect sampling), plus flip if asked, as one affine warp."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width and height as shares of the image side
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - ch)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if not flip_images:
        sign = torch.ones_like(sign)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_batch(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch in [0, 1] with ``policy``, one of :data:`AUGMENTATIONS`."""
    if policy == "none":
        return x
    if policy == "flip":
        flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)
    if policy in ("crop", "crop-flip"):
        return _crop_flip(x, generator, flip_images=policy == "crop-flip")
    if policy in ("rrc", "rrc-flip"):
        return _resized_crop_flip(x, generator, flip_images=policy == "rrc-flip")
    raise ValueError(f"unknown augmentation {policy!r}; choose one of {AUGMENTATIONS}")


def to_model_input(images: torch.Tensor, spec: InputSpec, *, augment: str = "none",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` images -> normalised float inputs of ``spec``'s channels and size."""
    x = images.float().div_(255.0)
    x = augment_batch(x, augment, generator)
    if x.shape[1] != spec.channels:
        if x.shape[1] == 1:
            x = x.expand(-1, spec.channels, -1, -1)
        elif spec.channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot adapt {x.shape[1]}-channel images to a {spec.channels}-channel model")
    if x.shape[-2:] != (spec.size, spec.size):
        down = x.shape[-1] > spec.size
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=down)
    mean = x.new_tensor(spec.mean)[None, :, None, None]
    std = x.new_tensor(spec.std)[None, :, None, None]
    return (x - mean) / std
