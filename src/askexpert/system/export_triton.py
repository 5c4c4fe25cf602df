"""``askexpert export triton``: a bundle's experts as a Triton model repository (:mod:`askexpert.contract.triton_repo`):
each expert (and the general model) exported to ONNX, checked against torch, with its ``config.pbtxt`` and the
bundle's system id in its parameters, a manifest, and a README that says how to start Triton on it. Every
configuration is parsed with Triton's own model-config protobuf (``tritonclient``) before it is kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from askexpert.contract.bundle import open_system
from askexpert.contract.oip import model_name
from askexpert.contract.triton_repo import RepoModel, config_pbtxt, write_manifest
from askexpert.errors import ConfigError
from askexpert.models.onnx_export import export_onnx


@dataclass(frozen=True)
class TritonBatching:
    """How Triton batches each model: askexpert serve's own defaults unless told otherwise."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue_size: int = 0  # requests queued beyond this are refused at once (0: no bound)


def parse_config(text: str):
    """``text`` parsed as Triton's ``ModelConfig`` (its protobuf, shipped in tritonclient); a text Triton would
    refuse raises ``google.protobuf.text_format.ParseError``; None where tritonclient is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def export_triton(bundle: Path, out: Path, batching: TritonBatching = TritonBatching(), *,
                  include_general: bool = True) -> list[RepoModel]:
    """Write the repository of ``bundle``'s experts into ``out`` (module docstring); returns its models."""
    if batching.max_batch_size < 1 or batching.instances < 1 or min(batching.max_queue_delay_us,
                                                                        batching.max_queue_size) < 0:
        raise ConfigError(f"Triton batching {batching} is not one Triton takes",
                          fix="--max-batch and --instances 1 or more, --max-wait-ms and --max-queue 0 or more")
    system = open_system(bundle)
    m = system.manifest
    entries = [(e.id, e, len(e.classes) + (1 if e.has_other else 0)) for e in m.experts]
    if include_general and m.general is not None:
        entries.append(("general", m.general, len(m.classes)))
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for key, entry, outputs in entries:
        model = RepoModel(model_name(key), tuple(entry.input_shape), outputs,
                          batching.max_batch_size, batching.max_queue_delay_us, batching.instances,
                          batching.max_queue_size)
        export_onnx(system.path(entry.checkpoint), model.onnx(out))
        text = config_pbtxt(model, system.system_id)
        parse_config(text)
        (out / model.name / "config.pbtxt").write_text(text)
        models.append(model)
    write_manifest(out, system.system_id, models, str(system.root))
    (out / "README.md").write_text(_readme(system.root, system.system_id, models))
    return models


def _readme(bundle: Path, system_id: str, models: list[RepoModel]) -> str:
    names = ", ".join(m.name for m in models)
    return f"""# Triton model repository of an askexpert bundle

Exported by `askexpert export triton` from `{bundle}` (system id `{system_id}`). Models: {names}; each
takes `images` (UINT8 [N, C, H, W]) and gives `logits` (FP32), with the system id in its parameters
(`askexpert_system_id`), which the edge checks before it sends an image.

Start Triton on it (a release with the ONNX Runtime backend; CPU is enough):

    docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD:/models \\
        nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models

or without Docker, through PyTriton (`pip install 'askexpert[triton]'` in an environment of its own):

    askexpert serve --backend triton . --port 8000

Then point the edge at it over the Open Inference Protocol:

    askexpert edge BUNDLE --server http://HOST:8000 --server-protocol v2
"""
