"""A device's batch-1 latency predicted from a model's graph, by op class, fitted to the device's own
published figures.

One number (a reference model's host-to-device slowdown) cannot hold across architectures: a device's
speed depends on the op (a 3x3 convolution runs Winograd kernels, a 1x1 one is a matrix product, a fully
connected layer streams its weights from memory, a depthwise convolution and a normalisation are
bandwidth-bound), and each device and runtime has its own mix. So a model is read as a handful of op
classes (:data:`OP_CLASSES`), each with its amount of work taken from the ONNX graph at batch 1, and the
device's time is a non-negative sum of those amounts, each at its own cost, fitted to the published
per-model table of the device (``costs/profiles.yaml``, ``edge_speeds.<device>.published``) by least
squares on the relative error (a 50 ms model counts as much as a 5 s one).

Reading a graph needs the ``onnx`` package (``askexpert[all]``); the fit needs SciPy's non-negative
least squares. The features of the published models are kept beside this module
(``reference_graphs.json``, written by ``askexpert testbed check --refresh``) so a fit needs no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from askexpert.errors import AskExpertError, ConfigError

# The op classes and their units: multiply-accumulates (millions) for the first six, megabytes written for
# "elementwise", a count for "layers" (each a fixed per-op cost: dispatch, packing, a pass over memory).
#   conv_3x3        3x3 convolutions of stride 1, one group (the Winograd kernels' case)
#   conv_spatial    other kxk convolutions, k > 1, one group (strided, 5x5, 7x7, patch embeddings)
#   conv_pointwise  1x1 convolutions, one group (a matrix product over pixels)
#   conv_grouped    grouped and depthwise convolutions
#   dense           fully connected layers and matrix products by a weight (Gemm, MatMul by a constant)
#   attention       matrix products of two activations (attention's QK^T and AV)
#   elementwise     every other computing op's output bytes (a chain of pointwise ops counts once)
#   layers          computing ops (not shape bookkeeping; a chain of pointwise ops counts once)
OP_CLASSES = ("conv_3x3", "conv_spatial", "conv_pointwise", "conv_grouped", "dense", "attention", "elementwise",
              "layers")
UNITS = {"conv_3x3": "MMAC", "conv_spatial": "MMAC", "conv_pointwise": "MMAC", "conv_grouped": "MMAC",
         "dense": "MMAC", "attention": "MMAC", "elementwise": "MB", "layers": "ops"}
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Constant"}  # no data moved
# How hard a table without a transformer leans on the prior device's op-class costs: chosen by the mean
# leave-one-out error over the two such tables (snapdragon-820, jetson-agx-orin-cpu) among 0.01, 0.03, 0.1,
# 0.3 and 1 (20.8, 21.8, 23.1, 18.9 and 19.0%). It decides what those devices' ViT layers cost (DeiT-Tiny
# on the Orin's CPU: 619 ms at 0.01, 141 ms at 0.3, 111 ms at 1): their own tables cannot.
PRIOR_WEIGHT = 0.3
FLOATS = {1, 10, 11, 16}  # float, float16, double, bfloat16
FEATURE_FILE = Path(__file__).with_name("reference_graphs.json")


@dataclass(frozen=True)
class GraphFeatures:
    """How much work of each op class one batch-1 call of a graph does."""

    values: dict[str, float]

    def vector(self, classes: tuple[str, ...] = OP_CLASSES) -> np.ndarray:
        return np.array([self.values.get(c, 0.0) for c in classes], dtype=np.float64)

    def to_dict(self) -> dict[str, float]:
        return {c: round(float(self.values.get(c, 0.0)), 6) for c in OP_CLASSES}


def _need_onnx():
    try:
        import onnx
    except ImportError as err:
        raise AskExpertError(f"reading a model's graph for the device model needs the onnx package ({err})",
                             fix="pip install 'askexpert[all]'") from err
    return onnx


def _shapes(model) -> dict[str, tuple[int, ...]]:
    """Every floating-point tensor's static shape at batch 1 (ONNX shape inference with the batch dimension
    pinned); integer tensors (shape arithmetic) are left out."""
    onnx = _need_onnx()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.elem_type in FLOATS and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else list(a.ints) if a.type == 7 else default
    return default


def graph_features(path: Path | str) -> GraphFeatures:
    """The op-class work of the ONNX graph at ``path``, at batch 1."""
    onnx = _need_onnx()
    model = onnx.load(str(path), load_external_data=False)
    shapes = _shapes(model)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for n in model.graph.node:  # a weight seen through a Transpose or Cast is still a weight
        if n.op_type in ("Transpose", "Cast", "Identity") and n.input and n.input[0] in constants:
            constants |= set(n.output)
    out = dict.fromkeys(OP_CLASSES, 0.0)
    fused = _fused(model)
    for node in model.graph.node:
        y = shapes.get(node.output[0]) if node.output else None
        if node.op_type in VIEWS or node.output[0] in constants or y is None or node.output[0] in fused:
            continue
        out["layers"] += 1
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            macs = float(np.prod(y)) * float(np.prod(w[1:]))
            group = _attr(node, "group", 1)
            stride = _attr(node, "strides", [1, 1])
            kind = ("conv_grouped" if group > 1 else
                    "conv_pointwise" if int(np.prod(w[2:])) == 1 else
                    "conv_3x3" if tuple(w[2:]) == (3, 3) and max(stride) == 1 else "conv_spatial")
            out[kind] += macs / 1e6
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a is None or b is None:
                continue
            transposed = node.op_type == "Gemm" and _attr(node, "transA", 0)
            k = a[-2] if transposed else a[-1]
            macs = float(np.prod(y)) * float(k)
            weighted = node.input[1] in constants or node.input[0] in constants
            out["dense" if weighted else "attention"] += macs / 1e6
        else:
            out["elementwise"] += 4.0 * float(np.prod(y)) / 1e6
    return GraphFeatures(out)


@cache
def _features_at(path: str, mtime_ns: int, size: int) -> GraphFeatures:
    return graph_features(path)


def cached_features(path: Path | str) -> GraphFeatures:
    """:func:`graph_features`, read once a process for a file as it stands (its path, size and modification
    time): the pacing of every model call, each setting of ``askexpert plan`` and the decision map ask again."""
    st = Path(path).stat()
    return _features_at(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


POINTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Erf", "Tanh",
             "Sigmoid", "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Gelu", "Min", "Max"}


def _fused(model) -> set[str]:
    """Outputs of pointwise ops whose one consumer is another pointwise op: a runtime runs such a chain as
    one kernel (a GELU exported as erf, add and multiplies, a SiLU as sigmoid and multiply), so only the
    chain's last op writes memory and counts. Without this the same model, exported two ways, is priced
    two ways."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    return {n.output[0] for n in model.graph.node
            if n.op_type in POINTWISE and n.output and n.output[0] not in outputs
            and len(consumers.get(n.output[0], [])) == 1 and consumers[n.output[0]][0].op_type in POINTWISE}


@dataclass(frozen=True)
class DeviceModel:
    """Milliseconds per unit of each op class on one device, fitted to its published figures."""

    device: str
    coef: dict[str, float]
    fitted_on: tuple[str, ...]

    def predict_ms(self, features: GraphFeatures) -> float:
        return float(sum(self.coef.get(c, 0.0) * features.values.get(c, 0.0) for c in OP_CLASSES))

    def breakdown_ms(self, features: GraphFeatures) -> dict[str, float]:
        return {c: self.coef.get(c, 0.0) * features.values.get(c, 0.0) for c in OP_CLASSES}

    def to_dict(self) -> dict:
        return {"device": self.device, "coef_ms_per_unit": self.coef, "units": UNITS, "fitted_on": list(self.fitted_on)}

    @classmethod
    def from_dict(cls, d: dict) -> DeviceModel:
        return cls(d["device"], dict(d["coef_ms_per_unit"]), tuple(d["fitted_on"]))


def fit(device: str, features: dict[str, GraphFeatures], published_ms: dict[str, float],
        prior: DeviceModel | None = None, prior_weight: float | None = None) -> DeviceModel:
    """Non-negative op-class costs minimising the squared relative error over the published models.

    ``prior``: another device's model whose op-class proportions this one leans on (a table without a
    transformer says nothing of a ViT's dense layers): it is scaled to this device's overall speed (the
    median ratio over the table) and every class's cost is pulled toward the scaled prior's, each pull
    weighing ``prior_weight`` published models' relative error.
    """
    from scipy.optimize import nnls

    prior_weight = PRIOR_WEIGHT if prior_weight is None else prior_weight
    names = [n for n in published_ms if n in features]
    if len(names) < 2:
        raise ConfigError(f"device {device}: {len(names)} published model(s) with a known graph; a device model "
                          "needs at least two", fix="add published per-model figures (with their source) to the "
                          "profile's `published` table in costs/profiles.yaml")
    a = np.stack([features[n].vector() / published_ms[n] for n in names])
    b = np.ones(len(names))
    if prior is not None:
        speed = float(np.median([published_ms[n] / prior.predict_ms(features[n]) for n in names]))
        anchored = [(i, speed * prior.coef[c]) for i, c in enumerate(OP_CLASSES) if prior.coef.get(c, 0) > 0]
        rows = np.zeros((len(anchored), len(OP_CLASSES)))
        for r, (i, target) in enumerate(anchored):
            rows[r, i] = prior_weight / target
        a, b = np.vstack([a, rows]), np.r_[b, np.full(len(anchored), prior_weight)]
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)  # columns of one size, for the solver
    coef, _ = nnls(a / scale, b, maxiter=50 * a.shape[1])
    coef = coef / scale
    return DeviceModel(device, {c: float(v) for c, v in zip(OP_CLASSES, coef, strict=True)}, tuple(names))


@dataclass(frozen=True)
class Check:
    """One published model against the device model: fitted with it (in-sample) and without it (leave one out)."""

    model: str
    published_ms: float
    predicted_ms: float
    loo_ms: float

    @property
    def error_pct(self) -> float:
        return 100 * (self.predicted_ms / self.published_ms - 1)

    @property
    def loo_error_pct(self) -> float:
        return 100 * (self.loo_ms / self.published_ms - 1)


def validate(device: str, features: dict[str, GraphFeatures], published_ms: dict[str, float],
             prior: DeviceModel | None = None) -> list[Check]:
    """Every published model predicted in-sample and leave-one-out (the model refitted without it)."""
    full = fit(device, features, published_ms, prior)
    rows = []
    for name in full.fitted_on:
        rest = {n: v for n, v in published_ms.items() if n != name}
        loo = fit(device, features, rest, prior)
        rows.append(Check(name, published_ms[name], full.predict_ms(features[name]), loo.predict_ms(features[name])))
    return rows


@cache
def reference_features() -> dict[str, GraphFeatures]:
    """The published models' graph features kept beside this module (``reference_graphs.json``)."""
    if not FEATURE_FILE.is_file():
        return {}
    raw = json.loads(FEATURE_FILE.read_text())
    return {name: GraphFeatures(entry["features"]) for name, entry in raw["models"].items()}


def require_covered(model: DeviceModel, features: GraphFeatures, what: str) -> None:
    """Refuse to price ``what`` on ``model``'s device where the graph does work of an op class that no model of
    the device's table does and the fit left at no cost (a prediction would silently leave that work out)."""
    refs = reference_features()
    seen = {c for n in model.fitted_on if n in refs for c in OP_CLASSES if refs[n].values.get(c, 0.0) > 0}
    missing = [c for c in OP_CLASSES if features.values.get(c, 0.0) > 0 and c not in seen
               and model.coef.get(c, 0.0) == 0]
    if missing:
        work = ", ".join(f"{c} ({features.values[c]:.1f} {UNITS[c]})" for c in missing)
        raise ConfigError(f"device {model.device} has no figure for {what}'s {work}: none of its published models "
                          "does that work", fix="add a sourced figure of a model that does it to the device's table "
                          "in costs/profiles.yaml, or choose another device")
