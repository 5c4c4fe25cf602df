"""Named model presets over ``timm.create_model``: an edge ("generalist") and a medium ("expert")
size for each input scale.

* 28x28 grayscale (Fashion-MNIST) and 32x32 RGB (CIFAR): ViTs trained from scratch whose patch
  embedding is a two-layer convolutional stem (stride 4 in all, so 7x7 or 8x8 tokens, as with 4x4
  patches; see ``askexpert.models.vit``), with average-pooled tokens instead of a class token. Both
  choices make a small ViT learn much faster from little data (measured in BENCHMARKS.md).
* ``vit-mini-*-28``: the pair of the reference experiment that runs on 2 CPU cores
  (``benchmarks/experts_table.py --profile cpu``), chosen by a validation screen; the near-edge
  model costs 3.8x the edge model's FLOPs, the DeiT-Small : DeiT-Tiny proportion of the paper.
* 224x224 RGB: timm's DeiT-Tiny (edge) and DeiT-Small (expert), ImageNet-pretrained where the weights
  can be fetched.

Any other timm model name works too (``model.name`` plus ``model.kwargs``); presets are shortcuts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SCRATCH = {"class_token": False, "global_pool": "avg", "stem_depth": 2}
_CONVSTEM = "askexpert_vit_convstem"


@dataclass(frozen=True)
class Preset:
    name: str
    role: str  # "edge" or "expert"
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    description: str = ""

    @property
    def channels(self) -> int:
        return int(self.kwargs.get("in_chans", 3))

    @property
    def size(self) -> int:
        return int(self.kwargs.get("img_size", 224))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("vit-edge-28", "edge", _CONVSTEM,
               dict(_SCRATCH, img_size=28, in_chans=1, embed_dim=128, depth=4, num_heads=4),
               description="edge generalist for 28x28 grayscale: ViT d128 x 4, conv stem, 7x7 tokens"),
        Preset("vit-expert-28", "expert", _CONVSTEM,
               dict(_SCRATCH, img_size=28, in_chans=1, embed_dim=192, depth=6, num_heads=3),
               description="near-edge expert for 28x28 grayscale: ViT d192 x 6, conv stem, 7x7 tokens"),
        Preset("vit-mini-edge-28", "edge", _CONVSTEM,
               dict(_SCRATCH, img_size=28, in_chans=1, embed_dim=64, depth=4, num_heads=2),
               description="the 2-core reference experiment's edge generalist: ViT d64 x 4, conv stem (24 MFLOPs)"),
        Preset("vit-mini-expert-28", "expert", _CONVSTEM,
               dict(_SCRATCH, img_size=28, in_chans=1, embed_dim=128, depth=4, num_heads=4),
               description="the 2-core reference experiment's near-edge model: ViT d128 x 4, conv stem "
                           "(89 MFLOPs, 3.8x the mini edge, as DeiT-Small is 3.6x DeiT-Tiny)"),
        Preset("vit-edge-32", "edge", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=3, embed_dim=192, depth=6, num_heads=3),
               description="edge generalist for 32x32 RGB: ViT d192 x 6, conv stem, 8x8 tokens"),
        Preset("vit-expert-32", "expert", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=3, embed_dim=384, depth=12, num_heads=6),
               description="near-edge expert for 32x32 RGB: ViT-Small size (d384 x 12), conv stem, 8x8 tokens"),
        Preset("vit-mini-edge-32g", "edge", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=1, embed_dim=64, depth=4, num_heads=2),
               description="edge generalist for 32x32 grayscale (han100): ViT d64 x 4, conv stem, 8x8 tokens"),
        Preset("vit-micro-edge-32g", "edge", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=1, embed_dim=32, depth=4, num_heads=2),
               description="a smaller edge generalist for 32x32 grayscale: ViT d32 x 4, conv stem"),
        Preset("vit-mini-expert-32g", "expert", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=1, embed_dim=128, depth=4, num_heads=4),
               description="near-edge expert for 32x32 grayscale (han100): ViT d128 x 4, conv stem"),
        Preset("vit-mini-large-32g", "expert", _CONVSTEM,
               dict(_SCRATCH, img_size=32, in_chans=1, embed_dim=256, depth=4, num_heads=4),
               description="four times the expert's size for 32x32 grayscale: ViT d256 x 4 (the headroom screen)"),
        Preset("deit-edge-224", "edge", "deit_tiny_patch16_224", {}, pretrained=True,
               description="edge generalist for 224x224 RGB: DeiT-Tiny, ImageNet-pretrained"),
        Preset("deit-expert-224", "expert", "deit_small_patch16_224", {}, pretrained=True,
               description="near-edge expert for 224x224 RGB: DeiT-Small, ImageNet-pretrained"),
    ]
}
