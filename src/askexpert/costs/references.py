"""The published models, built here so their graphs can be read and run on this host.

A device profile's published table (``costs/profiles.yaml``) names models by the device benchmark's names
(Tencent ncnn's). :data:`REFERENCES` builds each as the closest public definition with weights drawn at
random with a fixed seed (latency depends on the architecture, not the weights); its ONNX graph is
exported once with torch and cached under the user cache directory, so the edge process times it with
ONNX Runtime alone and the device model reads its op classes (:func:`refresh_features`)."""

from __future__ import annotations

import os
from pathlib import Path

from askexpert.errors import AskExpertError
from askexpert.paths import user_cache_dir

# The published models, by the name the device tables use (Tencent ncnn's benchmark), each built here with
# random weights as the closest public definition: (library, constructor, input size). ncnn's graphs come
# from Caffe and other sources; these are the same architectures, not the same files (docs/testbed.md).
REFERENCES = {
    "squeezenet": ("torchvision", "squeezenet1_1", 227),
    "mobilenet": ("timm", "mobilenetv1_100", 224),
    "mobilenet_v2": ("torchvision", "mobilenet_v2", 224),
    "mobilenet_v3": ("torchvision", "mobilenet_v3_large", 224),
    "shufflenet_v2": ("torchvision", "shufflenet_v2_x1_0", 224),
    "mnasnet": ("torchvision", "mnasnet1_0", 224),
    "efficientnet_b0": ("torchvision", "efficientnet_b0", 224),
    "regnety_400m": ("torchvision", "regnet_y_400mf", 224),
    "googlenet": ("caffe", "bvlc_googlenet", 224),
    "resnet18": ("torchvision", "resnet18", 224),
    "alexnet": ("caffe", "bvlc_alexnet", 227),
    "vgg16": ("torchvision", "vgg16", 224),
    "resnet50": ("torchvision", "resnet50", 224),
    # ViT-B/32 at 384 x 384 (ncnn's vision_transformer): torchvision's VisionTransformer at that size
    "vision_transformer": ("torchvision-vit", "vit_b_32", 384),
    # not in any published table: the paper's edge generalist and experts, predicted from the device models
    "deit_tiny": ("timm", "deit_tiny_patch16_224", 224),
    "deit_small": ("timm", "deit_small_patch16_224", 224),
    # not in any published table either: the models of askexpert's own H100 batch curve (costs/profiles.yaml,
    # server_devices.h100), timm's ViTs with the sizes the measurement used
    "vit_small_32": ("timm", "vit_small_patch16_224", 32, {"img_size": 32, "patch_size": 4}),
    "vit_d192x6_28": ("timm", "vit_tiny_patch16_224", 28,
                      {"img_size": 28, "patch_size": 4, "in_chans": 1, "depth": 6, "num_classes": 10}),
}


def _spec(name: str) -> tuple[str, str, int, dict]:
    """``REFERENCES[name]`` as (library, constructor, input size, constructor keywords)."""
    library, constructor, size, *kwargs = REFERENCES[name]
    return library, constructor, size, (kwargs[0] if kwargs else {})


def input_shape(name: str) -> list[int]:
    _, _, size, kwargs = _spec(name)
    return [1, kwargs.get("in_chans", 3), size, size]


def reference_path(name: str) -> Path:
    return user_cache_dir() / "reference" / f"{name}-fp32-b1.onnx"


def _build(name: str):
    library, constructor, size, kwargs = _spec(name)
    import torch

    torch.manual_seed(0)
    if library == "caffe":
        return (_bvlc_alexnet() if constructor == "bvlc_alexnet" else _bvlc_googlenet()), size
    if library == "timm":
        import timm

        return timm.create_model(constructor, pretrained=False, **kwargs).eval(), size
    import torchvision

    if library == "torchvision-vit":
        return torchvision.models.VisionTransformer(image_size=size, patch_size=32, num_layers=12, num_heads=12,
                                                    hidden_dim=768, mlp_dim=3072).eval(), size
    return torchvision.models.get_model(constructor, weights=None).eval(), size


def _bvlc_alexnet():
    """Caffe's BVLC AlexNet (ncnn's alexnet): 96 first filters, local response normalisation, two-group
    convolutions 2, 4 and 5, 227 x 227 input; torchvision's AlexNet is the one-group variant without LRN."""
    from torch import nn

    def block(cin, cout, k, *, stride=1, pad=0, groups=1, lrn=False, pool=False):
        layers = [nn.Conv2d(cin, cout, k, stride, pad, groups=groups), nn.ReLU()]
        layers += [nn.LocalResponseNorm(5, 1e-4, 0.75)] if lrn else []
        layers += [nn.MaxPool2d(3, 2)] if pool else []
        return layers

    return nn.Sequential(*block(3, 96, 11, stride=4, lrn=True, pool=True),
                         *block(96, 256, 5, pad=2, groups=2, lrn=True, pool=True), *block(256, 384, 3, pad=1),
                         *block(384, 384, 3, pad=1, groups=2), *block(384, 256, 3, pad=1, groups=2, pool=True),
                         nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 1000)).eval()


def _bvlc_googlenet():
    """Caffe's BVLC GoogLeNet (ncnn's googlenet): local response normalisation, true 5x5 branches, no batch
    normalisation; torchvision's GoogLeNet has batch norm and 3x3 convolutions in its "5x5" branches."""
    import torch
    from torch import nn

    def conv(cin, cout, k, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU())

    class Inception(nn.Module):
        def __init__(self, cin, c1, r3, c3, r5, c5, cp):
            super().__init__()
            self.b1, self.b3 = conv(cin, c1, 1), nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3))
            self.b5 = nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, cp, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    return nn.Sequential(
        conv(3, 64, 7, 2), pool(), nn.LocalResponseNorm(5, 1e-4, 0.75), conv(64, 64, 1), conv(64, 192, 3),
        nn.LocalResponseNorm(5, 1e-4, 0.75), pool(),
        Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
        Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
        Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
        Inception(528, 256, 160, 320, 32, 128, 128), pool(),
        Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)).eval()


def ensure_reference(name: str) -> Path:
    """The published model's ONNX file, exported now (needs torch, torchvision and timm) if not cached."""
    if name not in REFERENCES:
        raise AskExpertError(f"no reference workload {name!r}", fix=f"use one of: {', '.join(REFERENCES)}")
    path = reference_path(name)
    if path.is_file():
        return path
    try:
        import torch
    except ImportError as err:
        raise AskExpertError(f"the reference workload {name} is not cached at {path} and exporting it needs torch "
                             f"({err})", fix="run once on a full install: pip install 'askexpert[all]' && "
                             "askexpert edge SYSTEM --device DEVICE (it caches the file), or copy the file there"
                             ) from err
    model, _ = _build(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one writer's own: two processes may export it at once
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # attention as plain ops: the fused kernel has no ONNX form
    try:
        with torch.no_grad():
            torch.onnx.export(model, (torch.randn(*input_shape(name)),), str(tmp), input_names=["x"],
                              output_names=["y"], dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    tmp.replace(path)
    return path


def refresh_features(progress=None, names: list[str] | None = None) -> Path:
    """Export every published model (``REFERENCES``, or ``names`` of them, the others kept as written), read its
    op-class features and write them to ``costs/reference_graphs.json`` (what a device model is fitted on
    without torch)."""
    import json

    from askexpert.costs.device_model import FEATURE_FILE, graph_features

    models = json.loads(FEATURE_FILE.read_text())["models"] if names and FEATURE_FILE.is_file() else {}
    for name in names or REFERENCES:
        if progress is not None:
            progress(name)
        library, constructor, _, kwargs = _spec(name)
        built = f"{library}:{constructor}" + "".join(f",{k}={v}" for k, v in kwargs.items())
        models[name] = {"built_as": built, "input": input_shape(name),
                        "features": graph_features(ensure_reference(name)).to_dict()}
    models = {n: models[n] for n in REFERENCES if n in models}
    FEATURE_FILE.write_text(json.dumps({"note": "op-class work at batch 1 of each published model's graph, written "
                                        "by `askexpert testbed check --refresh` (askexpert.costs.references)",
                                        "models": models}, indent=1) + "\n")
    return FEATURE_FILE
