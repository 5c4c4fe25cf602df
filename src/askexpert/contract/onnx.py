"""What an exported generalist's ONNX graph carries besides the graph: its class names and input spec.

:func:`askexpert.models.onnx_export.export_onnx` writes it (build time, torch) and
:class:`askexpert.runtime.onnx_model.OnnxGeneralist` reads it (the edge, torch-free): one key, one format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from askexpert.contract.schema import InputSpec

METADATA_KEY = "askexpert"


def metadata_value(class_names: list[str], input_spec: InputSpec, **provenance: str) -> str:
    """The JSON stored under :data:`METADATA_KEY` in the graph's metadata; ``provenance`` (where the
    weights came from) is kept for a person reading the file, the edge reads the rest."""
    return json.dumps({"class_names": list(class_names), "input": input_spec.model_dump(), **provenance})


def read_metadata(props: Mapping[str, str]) -> tuple[list[str], InputSpec] | None:
    """The class names and input spec from a graph's custom metadata, or None if askexpert did not write it."""
    if METADATA_KEY not in props:
        return None
    meta = json.loads(props[METADATA_KEY])
    return list(meta["class_names"]), InputSpec(**meta["input"])
