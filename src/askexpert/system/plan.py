"""``askexpert plan``'s parts, from a bundle and a setting: the generalist's time on the edge device, the
expert's and the general model's time and energy on the server device, the link's time for one offload's
bytes, and those bytes for the image as sent (:class:`~askexpert.costs.modes.ModeParts`); then the modes and
the recommendation (:mod:`askexpert.costs.modes`).

Device times are predictions from the models' ONNX graphs (the edge's op-class device model, the server
device's batch model); ``host`` on either side times the ONNX graph here with ONNX Runtime on one thread
(the median of 30 calls) instead. The experts' and the general model's graphs are exported once (torch) and
cached under the user cache directory.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import System, open_system
from askexpert.contract.codecs import Encoding, compress
from askexpert.contract.schema import OperatingCurve
from askexpert.costs.device_model import cached_features, require_covered
from askexpert.costs.modes import Goals, ModeParts, Recommendation, options, recommend
from askexpert.costs.profiles import CPU_SERVER, device, edge_speed, network, radio_for, server_overhead
from askexpert.costs.server_device import HOST, server_device
from askexpert.errors import ConfigError
from askexpert.runtime.link import LinkProfile, TraceLink, parse_link


@dataclass(frozen=True)
class ImageForm:
    """How an offloaded image travels: its encoding and its side in pixels (None: the bundle's input size)."""

    encoding: str = "raw"
    size: int | None = None

    def describe(self, size: int) -> str:
        return f"{self.encoding} {self.size or size} px"


@cache
def host_ms(onnx: Path, runs: int = 30) -> float:
    """The median milliseconds of one batch-1 call of ``onnx`` on this host (ONNX Runtime, one thread; timed
    once a process)."""
    import onnxruntime as ort

    options_ = ort.SessionOptions()
    options_.intra_op_num_threads = options_.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options_, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = (np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8) if "uint8" in inp.type
         else np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    for _ in range(3):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def image_bytes(form: ImageForm, channels: int, size: int, images: np.ndarray | None = None) -> tuple[int, str]:
    """An offloaded image's request body in bytes, and how it was found: raw is exact; a compressed form is the
    mean over ``images`` (``uint8 [N, C, H, W]``, resized to the side sent)."""
    side = form.size or size
    try:
        enc = Encoding.parse(form.encoding)
    except ValueError as err:
        raise ConfigError(str(err), fix="use --image raw, png or jpeg:Q") from err
    if enc.form in ("raw", "npy"):
        return channels * side * side + (128 if enc.form == "npy" else 0), "exact"
    if images is None or not len(images):
        raise ConfigError(f"the size of a {enc} image depends on the picture", fix="pass sample images: --images "
                          "FILE.npz (an 'images' array, uint8 [N, C, H, W]) or --images photos")
    from PIL import Image

    sizes = []
    for img in images:
        hwc = img.transpose(1, 2, 0)
        pic = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
        pic = pic.resize((side, side), Image.BILINEAR)
        arr = np.asarray(pic)
        arr = arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]
        sizes.append(len(compress(np.ascontiguousarray(arr), enc)))
    return int(round(float(np.mean(sizes)))), f"mean of {len(sizes)} sample images"


@dataclass(frozen=True)
class ModelGraphs:
    """The ONNX graphs a setting's costs are read from: the edge generalist, each expert, the general model
    (None: no full offload), and the image the edge model takes (channels, side)."""

    edge: Path
    experts: tuple[Path, ...]
    general: Path | None
    channels: int
    size: int
    label: str


def bundle_graphs(bundle: System) -> ModelGraphs:
    """The bundle's own models (experts and general model exported once with torch, cached by their weights)."""
    from askexpert.models.onnx_export import cached_onnx

    m = bundle.manifest
    general = cached_onnx(bundle.path(m.general.checkpoint)) if m.general is not None else None
    return ModelGraphs(bundle.generalist_onnx, tuple(cached_onnx(bundle.path(e.checkpoint)) for e in m.experts),
                       general, m.input.channels, m.input.size, f"the bundle's models ({m.input.size} px)")


def paper_graphs() -> ModelGraphs:
    """The paper's scale: DeiT-Tiny on the edge, DeiT-Small as each expert and as the general model (224 px RGB;
    random weights: their graphs' costs, not their accuracy)."""
    from askexpert.costs.references import ensure_reference

    small = ensure_reference("deit_small")
    return ModelGraphs(ensure_reference("deit_tiny"), (small,), small, 3, 224,
                       "the paper's scale: DeiT-Tiny edge, DeiT-Small experts and general model (224 px)")


def server_costs(graphs: ModelGraphs, name: str, batch: int) -> tuple[float, float, float | None, float | None, str]:
    """The experts' mean and the general model's time (ms) and energy (mJ) an image on server device ``name``
    at ``batch`` images a batch, and how they were found."""
    dev = server_device(name)

    def cost(path: Path) -> tuple[float, float]:
        if dev is None:
            ms = host_ms(path)
            return ms, device(CPU_SERVER).energy_j(ms / 1000) * 1000
        f = cached_features(path)
        if dev.batch1 is not None:
            require_covered(dev.batch1, f, f"the server model {path.name}")
        return dev.image_ms(f, batch), dev.image_mj(f, batch)

    pairs = [cost(p) for p in graphs.experts]
    general = cost(graphs.general) if graphs.general is not None else (None, None)
    how = (f"timed on this host (ONNX Runtime, 1 thread), priced at {CPU_SERVER}" if dev is None else
           f"{dev.describe()} at batch {batch}")
    return (float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs])), general[0], general[1],
            how)


def edge_costs(onnx: Path, name: str):
    """The generalist's time an image on edge device ``name``, its power profile (None: not modelled), and how."""
    if name == HOST:
        return host_ms(onnx), None, "timed on this host (ONNX Runtime, 1 thread); edge energy not modelled"
    speed = edge_speed(name)
    model, features = speed.device_model(), cached_features(onnx)
    require_covered(model, features, f"the edge model {Path(onnx).name}")
    ms = model.predict_ms(features)
    power = device(speed.energy_profile) if speed.energy_profile else None
    note = f"{name}'s device model" + (f" ({speed.caveat})" if speed.caveat else "")
    if power is None:
        note += "; edge energy not modelled (no sourced power profile)"
    return ms, power, note


def link_times(link: LinkProfile | TraceLink | None, up: int, down: int) -> tuple[float, ...]:
    if link is None:
        return (0.0,)
    if isinstance(link, TraceLink):
        return tuple(float(x) for x in link.sample_ms(up, down))
    return (1000 * link.delay_s(up, down),)


@dataclass
class Plan:
    parts: ModeParts
    recommendation: Recommendation
    bundle: str

    def to_dict(self) -> dict:
        p = self.parts
        return {"bundle": self.bundle, "edge_device": p.edge_device, "server_device": p.server_device,
                "link": p.link, "image": p.image, "up_bytes": p.up_bytes, "down_bytes": p.down_bytes,
                "edge_ms": p.edge_ms, "expert_ms": p.expert_ms, "expert_mj": p.expert_mj, "general_ms": p.general_ms,
                "general_mj": p.general_mj, "overhead_ms": p.overhead_ms,
                "link_ms_median": float(np.median(p.link_ms)), "link_ms_p95": float(np.quantile(p.link_ms, 0.95)),
                "notes": list(p.notes), **self.recommendation.to_dict()}


def mode_parts(curve: OperatingCurve | None, graphs: ModelGraphs, *, edge_device: str, server_device_name: str,
               link: str | LinkProfile | TraceLink | None, image: ImageForm, images: np.ndarray | None = None,
               server_batch: int = 1, source: str = "") -> ModeParts:
    """Everything :func:`askexpert.costs.modes.options` needs in one setting: the models' costs from ``graphs``,
    the accuracy from ``curve`` (the caller's: the bundle's own)."""
    if curve is None:
        raise ConfigError(f"bundle {source} has no operating curve (schema 1)",
                          fix="rebuild it with this askexpert: askexpert build-system ...")
    if server_batch < 1:
        raise ConfigError(f"a server batch of {server_batch} images", fix="use --server-batch 1 or more")
    parsed = parse_link(link) if link is None or isinstance(link, str) else link
    up, how_bytes = image_bytes(image, graphs.channels, graphs.size, images)
    down = curve.down_bytes
    edge_ms, power, edge_note = edge_costs(graphs.edge, edge_device)
    expert_ms, expert_mj, general_ms, general_mj, server_note = server_costs(graphs, server_device_name, server_batch)
    overhead = server_overhead()
    notes = [f"models: {graphs.label}", f"edge: {edge_note}", f"server: {server_note}",
             f"server software: {overhead.describe()}", f"image: {up} bytes up ({how_bytes}), {down} down",
             f"link: {parsed.describe() if parsed else 'none'}"]
    if curve.general_accuracy is None:
        notes.append("the bundle's curve has no full-offload accuracy (schema 4 or no general model): rebuild it "
                     "with this askexpert to weigh it")
    return ModeParts(edge_device, server_device_name, parsed.name if parsed else "none",
                     image.describe(graphs.size), edge_ms, expert_ms, expert_mj, general_ms, general_mj, overhead.ms,
                     link_times(parsed, up, down), up, down, power, network(radio_for(parsed.name if parsed else None)),
                     tuple(notes))


def plan(bundle_path: Path | System, goals: Goals, *, scale: str = "bundle", **setting) -> Plan:
    """The modes of ``bundle`` in one setting (:func:`mode_parts`'s keywords) and the one to deploy for ``goals``.
    ``scale``: ``bundle`` prices the bundle's own models; ``paper`` prices the paper's DeiT-Tiny / DeiT-Small at
    224 px with the bundle's accuracy curve (a what-if: the accuracy stays the bundle's)."""
    bundle = open_system(bundle_path)
    if bundle.manifest.data.name == "cost-only":
        raise ConfigError(f"{bundle.root} is a cost-only bundle (untrained weights): it has no accuracy to weigh the "
                          "modes by", fix="plan a trained bundle; --scale paper prices the paper's DeiT-Tiny / "
                          "DeiT-Small with that bundle's accuracy curve")
    graphs = paper_graphs() if scale == "paper" else bundle_graphs(bundle)
    parts = mode_parts(bundle.manifest.curve, graphs, source=str(bundle.root), **setting)
    return Plan(parts, recommend(options(bundle.manifest.curve, parts), goals), str(bundle.root))


def sample_images(spec: str | None) -> np.ndarray | None:
    """The images a compressed form's size is measured on: ``photos`` (16 seeded crops of a photograph,
    224 px), or an ``.npz`` file's ``images`` array (``uint8 [N, C, H, W]``); None: none given."""
    if spec is None:
        return None
    if spec == "photos":
        return photo_crops(16)
    path = Path(spec)
    try:
        with np.load(path) as data:
            images = data["images"]
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"cannot read sample images from {path}: {err}", fix="pass an .npz file with an 'images' "
                          "array (uint8 [N, C, H, W]), or --images photos") from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"{path}'s images are {images.dtype} {list(images.shape)}",
                          fix="save them as uint8 [N, C, H, W] with C 1 or 3")
    return images


def photo_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``uint8 [n, 3, size, size]`` natural-photo inputs: seeded random crops (30-100% of the side),
    flips and brightness changes of the photograph matplotlib ships (grace_hopper.jpg, 512x600), resized
    with Pillow. What the edge streams: the compressed forms' bytes need a photograph, not noise."""
    from matplotlib import cbook
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = photo.size
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        side = int(rng.uniform(0.3, 1.0) * min(w, h))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) * rng.uniform(0.7, 1.2)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = np.clip(arr, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out
