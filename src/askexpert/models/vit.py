"""ViT variants registered with timm, so ``timm.create_model`` (and checkpoints) know them by name.

``askexpert_vit_convstem``: a ViT whose 4x4 patch embedding is replaced by a small convolutional stem
(3x3 convolutions of stride 2, as in Xiao et al., "Early Convolutions Help Transformers See Better",
NeurIPS 2021), built from timm's own ``ConvStem`` and ``HybridEmbed``. On small images and short
budgets it learns markedly faster than a linear patch embedding at nearly the same cost.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.layers import HybridEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from timm.models.vision_transformer_hybrid import ConvStem

# No published weights: the config only records what the architecture expects.
default_cfgs = generate_default_cfgs({
    "askexpert_vit_convstem": {"num_classes": 10, "input_size": (3, 32, 32), "fixed_input_size": True,
                               "first_conv": "patch_embed.backbone.0.conv", "classifier": "head"},
})


@register_model
def askexpert_vit_convstem(pretrained: bool = False, stem_depth: int = 2, stem_full_res: int = 0,
                           **kwargs) -> VisionTransformer:
    """ViT with a convolutional stem: ``stem_full_res`` 3x3 layers at the input resolution (stride 1),
    then ``stem_depth`` layers that each halve it. Channels double layer by layer up to ``embed_dim``."""
    embed_dim = kwargs.setdefault("embed_dim", 192)
    kwargs.setdefault("depth", 6)
    kwargs.setdefault("num_heads", 3)
    layers = stem_full_res + stem_depth
    channels = tuple(max(8, embed_dim // 2**i) for i in range(layers))[::-1]
    backbone = ConvStem(in_chans=kwargs.get("in_chans", 3), depth=layers, channels=channels,
                        stride=(1,) * stem_full_res + (2,) * stem_depth, kernel_size=3, act_layer=nn.GELU)
    kwargs["patch_size"] = 1  # the stem does the down-sampling; tokens are its output pixels
    kwargs["embed_layer"] = partial(HybridEmbed, backbone=backbone, proj=False)
    return build_model_with_cfg(VisionTransformer, "askexpert_vit_convstem", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
