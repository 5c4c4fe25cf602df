"""The Open Inference Protocol (KServe's "v2", spoken by Triton, KServe, MLServer and OpenVINO Model Server):
the wire codec both ends share, torch-free and free of any web framework.

An expert is a model named ``expert-<id>`` (the general model: ``general``), version ``1``, taking one input
``images`` (``UINT8 [-1, C, H, W]``) and giving one output ``logits`` (``FP32 [-1, outputs]``): the expert
ONNX graph's logits (a Triton serving the exported repository), or, from askexpert's own server, the
log-probabilities times the expert's temperature, which are those logits up to a constant per image. Either
way the edge applies the bundle's calibration (softmax at the expert's temperature), its "other" output and
the top-k itself (:func:`answers`), so every OIP server answers as askexpert's ``/v1`` does.

A request carries its tensors as JSON (``data``: the values in row-major order) or with the **binary tensor
data extension**: the JSON header, then each binary tensor's bytes in the order the header lists them, with
the header's length in ``Inference-Header-Content-Length`` and each tensor's size in its parameters
(``binary_data_size``); an output is asked for in binary with ``parameters.binary_data``. Every size a header
declares is checked against the body, in Python integers, before any memory is given to a tensor. Errors
are :class:`OipError` (an HTTP status and the message of OIP's ``{"error": ...}`` body).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from askexpert.contract.labels import GENERAL

INPUT, OUTPUT = "images", "logits"
VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"
SYSTEM_PARAMETER = "askexpert_system_id"  # a model's parameter naming the bundle it was exported from
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_LOG_TINY = float(np.log(np.finfo(np.float32).tiny))  # the log of a probability that underflowed to 0


class OipError(ValueError):
    """A request or answer that breaks the protocol: ``status`` (400 malformed, 404 unknown model or version,
    413 too large) and the message of the ``{"error": ...}`` body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def model_name(expert_id: str) -> str:
    """The OIP model name of an expert (``general``: the general model)."""
    return GENERAL if expert_id == GENERAL else f"expert-{expert_id}"


def expert_of(name: str) -> str | None:
    """The expert id an OIP model name stands for (None: not one of askexpert's names)."""
    if name == GENERAL:
        return GENERAL
    return name.removeprefix("expert-") if name.startswith("expert-") and len(name) > 7 else None


def error_body(message: str) -> bytes:
    return _JSON({"error": message}).encode()


def model_metadata(name: str, input_shape: Sequence[int], outputs: int, *, platform: str,
                   system_id: str | None) -> dict:
    """``GET /v2/models/{name}``: the model's tensors; ``parameters`` names the bundle (where one is served)."""
    meta = {"name": name, "versions": [VERSION], "platform": platform,
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *input_shape]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, outputs]}]}
    if system_id is not None:
        meta["parameters"] = {SYSTEM_PARAMETER: system_id}
    return meta


# -- the client's side: a request out, an answer in --------------------------------------------------------

def infer_request(images: np.ndarray, *, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an inference request for a ``uint8 [N, C, H, W]`` batch: the binary extension
    (the image bytes after the JSON header, the logits asked back in binary) or plain JSON."""
    arr = np.ascontiguousarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise OipError(f"images must be uint8 [N, C, H, W], got {arr.dtype} {list(arr.shape)}")
    tensor = {"name": INPUT, "shape": list(arr.shape), "datatype": "UINT8"}
    if not binary:
        header = {"inputs": [{**tensor, "data": arr.ravel().tolist()}], "outputs": [{"name": OUTPUT}]}
        return _JSON(header).encode(), {"Content-Type": "application/json"}
    header = _JSON({"inputs": [{**tensor, "parameters": {"binary_data_size": arr.nbytes}}],
                    "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]}).encode()
    return header + arr.tobytes(), {"Content-Type": BINARY, HEADER_LENGTH: str(len(header))}


def read_response(body: bytes, header_length: str | None) -> tuple[dict[str, np.ndarray], dict]:
    """Every output tensor of an inference answer, by name (binary or JSON data), and its ``parameters``
    (askexpert's server puts its timings there; other servers may send none)."""
    header, tensors = _split(body, header_length, "outputs")
    params = header.get("parameters")
    return {t["name"]: a for t, a in zip(header["outputs"], tensors, strict=True)}, \
        params if isinstance(params, dict) else {}


def answers(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The calibrated probabilities of an expert's logits: softmax at its temperature, row by row."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# -- the server's side: a request in, an answer out --------------------------------------------------------

def read_request(body: bytes, header_length: str | None, *, expect: Sequence[int], max_images: int
                 ) -> tuple[np.ndarray, dict]:
    """The ``uint8 [N, C, H, W]`` images of an inference request whose model takes ``[C, H, W]`` images, and
    its header (for ``id`` and the outputs asked for); :class:`OipError` for anything else."""
    header, tensors = _split(body, header_length, "inputs", max_images=max_images, expect=expect)
    names = [t.get("name") for t in header["inputs"]]
    if names != [INPUT]:
        raise OipError(f"this model takes one input tensor named {INPUT!r}, the request has {names}")
    for out in header.get("outputs") or []:
        if not isinstance(out, dict) or out.get("name") != OUTPUT:
            raise OipError(f"this model has one output tensor, {OUTPUT!r}; the request asks for "
                           f"{out.get('name') if isinstance(out, dict) else out!r}")
    return tensors[0], header


def wants_binary(header: dict) -> bool:
    """Whether the request asks for its output in binary (per output, or for all of them)."""
    if (header.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in header.get("outputs") or [])


def scaled_log_probs(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Logits (up to a constant per image) whose softmax at ``temperature`` gives back ``probs``."""
    with np.errstate(divide="ignore"):
        return (np.maximum(np.log(probs.astype(np.float64)), _LOG_TINY) * temperature).astype(np.float32)


def infer_response(name: str, logits: np.ndarray, *, request_id: str | None, binary: bool,
                   parameters: Mapping[str, float | int | str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an inference answer carrying ``logits``; ``parameters``: the server's timings."""
    arr = np.ascontiguousarray(logits, dtype=np.float32)
    tensor = {"name": OUTPUT, "datatype": "FP32", "shape": list(arr.shape)}
    head = {"model_name": name, "model_version": VERSION, **({"id": request_id} if request_id else {}),
            **({"parameters": dict(parameters)} if parameters else {})}
    if not binary:
        if not np.isfinite(arr).all():
            raise OipError("the model produced non-finite logits", 500)
        return _JSON({**head, "outputs": [{**tensor, "data": arr.ravel().tolist()}]}).encode(), \
            {"Content-Type": "application/json"}
    header = _JSON({**head, "outputs": [{**tensor, "parameters": {"binary_data_size": arr.nbytes}}]}).encode()
    return header + arr.tobytes(), {"Content-Type": BINARY, HEADER_LENGTH: str(len(header))}


# -- both sides: a JSON header and the tensors after it ----------------------------------------------------

def _split(body: bytes, header_length: str | None, key: str, *, max_images: int | None = None,
           expect: Sequence[int] | None = None) -> tuple[dict, list[np.ndarray]]:
    if header_length is None:
        end = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise OipError(f"{HEADER_LENGTH} must be an integer no larger than the body ({len(body)} bytes), "
                       f"got {header_length[:40]!r}")
    else:
        end = int(header_length)
    try:
        header = json.loads(body[:end])
    except (ValueError, UnicodeDecodeError) as err:
        raise OipError(f"the inference header is not JSON ({err})") from err
    if not isinstance(header, dict) or not isinstance(header.get(key), list) or not header[key]:
        raise OipError(f"the inference header needs a non-empty list {key!r}")
    offset, tensors = end, []
    for t in header[key]:
        arr, offset = _tensor(t, body, offset, max_images, expect)
        tensors.append(arr)
    if offset != len(body):
        raise OipError(f"the body holds {len(body) - offset} bytes after its tensors: the binary_data_size of "
                       "each tensor must add up to the body after the header")
    return header, tensors


def _tensor(t, body: bytes, offset: int, max_images: int | None, expect: Sequence[int] | None
            ) -> tuple[np.ndarray, int]:
    """One tensor of a header (and its binary bytes from ``offset``): checked, then read."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise OipError("every tensor needs a name")
    name, dtype, shape = t["name"], t.get("datatype"), t.get("shape")
    if dtype not in DATATYPES:
        raise OipError(f"tensor {name!r}: datatype {dtype!r} is not one this server reads ({', '.join(DATATYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise OipError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if expect is not None:
        if dtype != "UINT8":
            raise OipError(f"tensor {name!r}: this model takes UINT8 images, got {dtype}")
        if len(shape) != 4 or shape[1:] != list(expect) or shape[0] < 1:
            raise OipError(f"tensor {name!r}: this model takes images of shape [N, {', '.join(map(str, expect))}], "
                           f"got {shape}")
        if max_images is not None and shape[0] > max_images:
            raise OipError(f"at most {max_images} images a request, got {shape[0]}", 413)
    count = math.prod(shape)  # Python integers: no overflow whatever the header says
    size = count * np.dtype(DATATYPES[dtype]).itemsize
    params = t.get("parameters") or {}
    if "binary_data_size" in params:
        declared = params["binary_data_size"]
        if not isinstance(declared, int) or declared != size:
            raise OipError(f"tensor {name!r}: binary_data_size {declared!r} but {dtype} {shape} needs {size} bytes")
        if offset + size > len(body):
            raise OipError(f"tensor {name!r}: the body ends {offset + size - len(body)} bytes short of its data")
        arr = np.frombuffer(body, dtype=DATATYPES[dtype], count=count, offset=offset).reshape(shape)
        return arr, offset + size
    data = t.get("data")
    if not isinstance(data, list):
        raise OipError(f"tensor {name!r}: neither data nor binary_data_size")
    try:
        arr = np.asarray(data, dtype=DATATYPES[dtype])
    except (ValueError, TypeError, OverflowError) as err:
        raise OipError(f"tensor {name!r}: data is not {dtype} values ({err})") from err
    if arr.size != count:
        raise OipError(f"tensor {name!r}: shape {shape} holds {count} values, data has {arr.size}")
    if dtype == "UINT8" and any(not isinstance(v, int) or not 0 <= v <= 255 for v in _flat(data)):
        raise OipError(f"tensor {name!r}: UINT8 data must be integers from 0 to 255")
    return arr.reshape(shape), offset


def _flat(data):
    for v in data:
        if isinstance(v, list):
            yield from _flat(v)
        else:
            yield v
