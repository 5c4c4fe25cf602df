"""Model presets over timm: every preset builds, runs, and reports parameters and FLOPs."""

from __future__ import annotations

import pytest
import torch

from askexpert.config import ModelConfig
from askexpert.errors import ModelError
from askexpert.models import PRESETS, build_model, count_parameters, flops_per_image, resolve_spec
from askexpert.models.info import describe_preset


def _spec(name, **kw):
    return resolve_spec(ModelConfig(name=name, **kw), num_classes=7, mean=(0.3,), std=(0.3,))


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.size <= 32])
def test_scratch_presets_build_and_classify(name):
    spec, pretrained = _spec(name)
    assert not pretrained
    model = build_model(spec).eval()
    x = torch.randn(2, spec.input.channels, spec.input.size, spec.input.size)
    assert model(x).shape == (2, 7)


def test_edge_preset_is_smaller_than_expert_preset():
    for scale in ("28", "32", "224"):
        edge = [p for p in PRESETS.values() if p.role == "edge" and p.name.endswith(scale)][0]
        expert = [p for p in PRESETS.values() if p.role == "expert" and p.name.endswith(scale)][0]
        e, x = describe_preset(edge), describe_preset(expert)
        assert e["parameters"] < x["parameters"] and e["flops"] < x["flops"]


def test_flops_match_the_vit_formula():
    """The counter sees every matrix product, fused attention included (a plain 4x4-patch ViT)."""
    d, depth, tokens = 128, 4, (28 // 4) ** 2
    spec, _ = _spec("vit_tiny_patch16_224", kwargs=dict(img_size=28, in_chans=1, patch_size=4, embed_dim=d,
                                                        depth=depth, num_heads=4, class_token=False,
                                                        global_pool="avg"))
    model = build_model(spec)
    per_block = 2 * tokens * (4 * d * d + 8 * d * d) + 2 * 2 * tokens * tokens * d  # qkv+proj+mlp, attention
    expected = depth * per_block + 2 * tokens * 16 * d + 2 * d * 7  # patch embedding, head
    assert flops_per_image(model, spec) == expected
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size, grid", [(28, 7), (32, 8)])
def test_conv_stem_vit_tokens_and_cost(size, grid):
    """The conv-stem ViT makes the same token grid as 4x4 patches, for a few percent more FLOPs."""
    kw = dict(img_size=size, in_chans=1, embed_dim=128, depth=4, num_heads=4, class_token=False, global_pool="avg")
    stem_spec, _ = _spec("askexpert_vit_convstem", kwargs=kw)
    patch_spec, _ = _spec("vit_tiny_patch16_224", kwargs=dict(kw, patch_size=4))
    stem, patch = build_model(stem_spec), build_model(patch_spec)
    assert stem.patch_embed.grid_size == (grid, grid) and stem.pos_embed.shape[1] == grid * grid
    ratio = flops_per_image(stem, stem_spec) / flops_per_image(patch, patch_spec)
    assert 1.0 < ratio < 1.15


def test_deit_presets_use_pretrained_normalisation():
    spec, pretrained = _spec("deit-edge-224")
    assert pretrained and spec.input.size == 224 and spec.input.channels == 3
    assert spec.input.mean == pytest.approx((0.485, 0.456, 0.406))
    spec, pretrained = _spec("deit-expert-224", pretrained=False)
    assert not pretrained and spec.input.mean == pytest.approx((0.3,) * 3)  # dataset stats, replicated


def test_any_timm_model_with_kwargs():
    spec, _ = _spec("resnet18", kwargs={"in_chans": 1})
    assert spec.input.channels == 1 and spec.timm_name == "resnet18"
    model = build_model(spec)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ModelError, match="unknown model 'vit-edge-82'.*did you mean.*vit-edge-28"):
        _spec("vit-edge-82")


def test_bad_kwargs_are_a_clear_error():
    spec, _ = _spec("vit-edge-28", kwargs={"no_such_arg": 3})
    with pytest.raises(ModelError, match="rejected its arguments"):
        build_model(spec)


def test_pretrained_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    spec, pretrained = _spec("deit-edge-224")
    with pytest.raises(ModelError, match="cannot fetch pretrained weights.*model.pretrained=false"):
        build_model(spec, pretrained=pretrained)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_file_loads_timm_weights_and_is_recorded(tmp_path, fmt):
    """Weights written by timm (safetensors, or a torch checkpoint) start a model through
    model.pretrained_file: the same logits, and the spec names the file and its sha256."""
    from safetensors.torch import save_file

    from askexpert.contract.bundle import sha256_file

    spec, _ = _spec("vit-edge-28")
    source = build_model(spec).eval()
    path = tmp_path / f"weights.{fmt}"
    save_file(source.state_dict(), str(path)) if fmt == "safetensors" else torch.save(source.state_dict(), path)
    spec2, pretrained = _spec("vit-edge-28", pretrained_file=str(path))
    assert pretrained and spec2.pretrained_file == str(path) and spec2.pretrained_sha256 == sha256_file(path)
    assert spec2.pretrained_source == f"file {path}"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(build_model(spec2, pretrained=True).eval()(x), source(x))
    assert not torch.allclose(build_model(spec2).eval()(x), source(x))  # without pretrained: a fresh model
    from askexpert.models import read_meta, save_checkpoint

    stem = save_checkpoint(tmp_path / "run" / "model", build_model(spec2, pretrained=True), spec=spec2,
                           kind="generalist", class_names=[str(i) for i in range(7)])
    recorded = read_meta(stem).model  # the checkpoint says which file the weights started from
    assert (recorded.pretrained_file, recorded.pretrained_sha256) == (str(path), sha256_file(path))
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="missing or changed"):
        build_model(spec2, pretrained=True)
    with pytest.raises(ModelError, match="does not exist"):
        _spec("vit-edge-28", pretrained_file=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="pretrained is false"):
        _spec("vit-edge-28", pretrained_file=str(path), pretrained=False)


def test_pretrained_weights_come_from_the_hugging_face_cache_offline(monkeypatch, tmp_path):
    """A DeiT's published weights already in the Hugging Face cache (its real layout) are used without the
    network, a classifier of another size is replaced, and the spec records the cached file."""
    import huggingface_hub.constants as hc
    import timm
    from safetensors.torch import save_file

    hub_id = timm.get_pretrained_cfg("deit_tiny_patch16_224").hf_hub_id
    snapshot = tmp_path / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / f"models--{hub_id.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{hub_id.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
    imagenet = timm.create_model("deit_tiny_patch16_224", num_classes=1000)
    save_file(imagenet.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    spec, pretrained = _spec("deit-edge-224")
    assert pretrained and spec.pretrained_file == str(snapshot / "model.safetensors")
    assert "Hugging Face cache" in spec.pretrained_source
    model = build_model(spec, pretrained=True)
    assert torch.equal(model.patch_embed.proj.weight, imagenet.patch_embed.proj.weight)
    assert model.head.weight.shape == (7, 192)  # the dataset's classes, not ImageNet's
