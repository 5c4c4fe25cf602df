"""A Triton model repository of a bundle's experts: its layout, each model's ``config.pbtxt`` and the manifest
(``askexpert-repository.json``) that names the bundle. Torch-free: ``askexpert export triton`` writes it (build
time, :mod:`askexpert.system.export_triton`), ``askexpert serve --backend triton`` and a person's own
``tritonserver --model-repository`` read it.

    REPO/askexpert-repository.json     the bundle's system id, and each model's tensors and batching
    REPO/expert-<id>/config.pbtxt      Triton's model configuration (ONNX Runtime platform)
    REPO/expert-<id>/1/model.onnx      uint8 images in, logits out (normalisation inside)
    REPO/general/...                   the general model, where the bundle carries one
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from askexpert.contract.oip import INPUT, OUTPUT, SYSTEM_PARAMETER, VERSION
from askexpert.errors import CheckpointError

MANIFEST = "askexpert-repository.json"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class RepoModel:
    """One model of the repository and how Triton serves it."""

    name: str  # expert-<id> or general (contract.oip.model_name)
    input_shape: tuple[int, int, int]  # [C, H, W] of a uint8 image
    outputs: int  # logits a row: the expert's classes, and "other" where it has one
    max_batch_size: int = 64
    max_queue_delay_us: int = 0  # dynamic batching: how long a batch waits for more requests
    instances: int = 1
    max_queue_size: int = 0  # requests waiting for a batch beyond this are refused at once (0: no bound)

    def onnx(self, repo: Path) -> Path:
        return repo / self.name / VERSION / MODEL_FILE


def config_pbtxt(model: RepoModel, system_id: str) -> str:
    """Triton's model configuration (protobuf text format) of ``model``."""
    c, h, w = model.input_shape
    queue = (f"\n  default_queue_policy {{ max_queue_size: {model.max_queue_size} timeout_action: REJECT }}"
             if model.max_queue_size else "")
    return f"""name: "{model.name}"
platform: "onnxruntime_onnx"
max_batch_size: {model.max_batch_size}
version_policy: {{ specific: {{ versions: [ {VERSION} ] }} }}
input [
  {{ name: "{INPUT}" data_type: TYPE_UINT8 dims: [ {c}, {h}, {w} ] }}
]
output [
  {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {model.outputs} ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {model.max_queue_delay_us}{queue}
}}
instance_group [
  {{ count: {model.instances} kind: KIND_CPU }}
]
parameters {{
  key: "{SYSTEM_PARAMETER}"
  value: {{ string_value: "{system_id}" }}
}}
"""


def write_manifest(repo: Path, system_id: str, models: list[RepoModel], source: str) -> Path:
    path = repo / MANIFEST
    path.write_text(json.dumps({"system_id": system_id, "source": source,
                                "models": [asdict(m) for m in models]}, indent=1) + "\n")
    return path


def read_manifest(repo: Path) -> tuple[str, list[RepoModel]]:
    """The system id and the models of an exported repository, each model's ONNX file checked present."""
    path = Path(repo) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{repo} is not a repository askexpert exported (no {MANIFEST})",
                              fix="write one: askexpert export triton BUNDLE --out REPO")
    try:
        raw = json.loads(path.read_text())
        models = [RepoModel(**{**m, "input_shape": tuple(m["input_shape"])}) for m in raw["models"]]
        system_id = str(raw["system_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})",
                              fix="export the repository again: askexpert export triton BUNDLE --out REPO") from err
    missing = [str(m.onnx(repo)) for m in models if not m.onnx(repo).is_file()]
    if missing:
        raise CheckpointError(f"{repo} lacks {', '.join(missing)}",
                              fix="export the repository again: askexpert export triton BUNDLE --out REPO")
    return system_id, models
