"""Configs: YAML validated by pydantic, overrides, one-line errors."""

from __future__ import annotations

import pytest
from conftest import provided

from askexpert.config import load_run_config
from askexpert.errors import ConfigError


def test_shipped_configs_validate():
    from askexpert.config import PACKAGED_CONFIGS

    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    assert {"demo-generalist", "generalist-fmnist", "general-fmnist", "experts-progressive-fmnist"} <= set(names)
    for name in names:
        if name == "ray-serve":  # the Ray Serve backend's deployment settings, not a run
            provided("ray")  # the test install has Ray: its settings are read, never passed over
            from askexpert.serving.ray_app import load_ray_settings

            assert load_ray_settings(name).experts.replicas == 1
            continue
        cfg = load_run_config(name)
        assert cfg.train.epochs > 0


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 3\n  lr: 0.01\n")
    cfg = load_run_config(path, ["train.epochs=5", "data.train_subset=100", "model.kwargs.depth=2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.train_subset) == (5, 0.01, 100)
    assert cfg.model.kwargs == {"depth": 2} and cfg.run_dir.name == "x"
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_run_config(again) == cfg


@pytest.mark.parametrize("text, pattern", [
    ("train:\n  epochs: many\n", r"train\.epochs: .*integer.*\(got 'many'\)"),
    ("train:\n  epocs: 3\n", r"train\.epocs: unknown key"),
    ("train: [1, 2\n", r"not valid YAML at line"),
    ("- a\n- b\n", r"must hold a mapping"),
    ("train:\n  lr: -1\n", r"train\.lr: Input should be greater than 0"),
    ("train:\n  device: gpu0\n", r"train\.device: .*auto, cpu, cuda"),
])
def test_malformed_config_is_one_clear_line(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_run_config(path)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)


def test_bad_overrides_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="malformed override"):
        load_run_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs: .*integer"):
        load_run_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="does not exist.*shipped config: demo-experts"):
        load_run_config(tmp_path / "nope.yaml")


def test_one_environment_switch_sets_the_training_precision(monkeypatch):
    """ASKEXPERT_PRECISION: auto follows the CPU (bf16 only where it is native), fp32 forces float32 as
    train.amp: false does, bf16 forces autocast even where it is emulated, anything else names the fix."""
    import torch

    from askexpert.training.engine import PRECISION_ENV, cpu_has_native_bf16, training_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert training_precision(cpu, True) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert training_precision(cpu, False) == "fp32"
    for value, expected in (("fp32", "fp32"), ("FP32", "fp32"), ("bf16", "bf16"), ("auto", None), ("", None)):
        monkeypatch.setenv(PRECISION_ENV, value)
        assert training_precision(cpu, True) == (expected or ("bf16" if cpu_has_native_bf16() else "fp32"))
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert training_precision(cpu, False) == "fp32"  # train.amp: false is never overridden upwards
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ConfigError, match="auto, fp32 or bf16"):
        training_precision(cpu, True)


def test_the_default_training_seed_comes_from_one_environment_switch(monkeypatch):
    from askexpert.config import SEED_ENV

    monkeypatch.delenv(SEED_ENV, raising=False)
    assert load_run_config(None, []).train.seed == 0
    monkeypatch.setenv(SEED_ENV, "2")
    assert load_run_config(None, []).train.seed == 2
    assert load_run_config(None, ["train.seed=5"]).train.seed == 5  # a run's own choice wins
    monkeypatch.setenv(SEED_ENV, "two")
    with pytest.raises(ConfigError, match="whole number"):
        load_run_config(None, [])


def test_overrides_never_write_into_the_callers_defaults():
    """One process may load many run configs from one defaults block (the CLI, the pipeline, the suite):
    an override of a nested key must not reach the next config through it."""
    from askexpert.training.experts import experts_run_defaults

    base = experts_run_defaults()
    first = load_run_config(None, ["experts.passes=3", "experts.distill=0.5", "model.name=vit-edge-28"], base=base)
    assert first.experts.passes == 3 and base == experts_run_defaults()
    second = load_run_config(None, [], base=base)
    assert second.experts.passes == 6.0 and second.experts.distill == 0.0 and second.model.name == "vit-expert-28"
