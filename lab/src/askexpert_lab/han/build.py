"""``han100``: a 100-class task of Han characters rendered from Debian's font packages, CIFAR-100's shape,
with a disjoint 1,000-class pool for pretraining (ImageNet's role); built offline by one command.

    askexpert data build han100            # ~2 minutes on 2 cores: ~/.cache/askexpert/han100/

What it holds (:data:`FULL`):

- **task** (``data.name: han100``): 100 characters in 20 radical groups of 5 (the coarse labels),
  32 x 32 grey; 500 training images a class drawn in the training designs, 50 validation images a
  class in the validation designs and 100 test images a class in the test designs (see
  :mod:`askexpert_lab.han.fonts`: no design straddles two splits, so the test fonts are fonts no
  split before it saw);
- **pool** (``data.name: han100-pool``): 1,000 further characters, 100 training images each in the
  training designs and 10 validation images each in the validation designs; its test split is its
  validation split (a pool is for pretraining, not for reporting).

Every image is made by code (:mod:`askexpert_lab.han.render`), none is downloaded, and the build
is deterministic from its seed: each image has its own generator, seeded by (seed, part, split,
class, index), so the same seed, fonts and FreeType give the same bytes whatever the worker count.
``manifest.json`` records the characters, every face (file, index, name, sha256), the packages with
their versions and licences, the augmentation, the software versions and each array file's sha256.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from askexpert.data.han import FORMAT_VERSION, PARTS, TASK, default_directory, load_part
from askexpert_lab.han import fonts as han_fonts
from askexpert_lab.han.chars import candidates, choose, radical_chars, read_unihan
from askexpert_lab.han.render import Augment, Glyphs, render


@dataclass(frozen=True)
class BuildSpec:
    """The size of a build: classes, images a class per split, image side, augmentation."""

    radicals: int = 20
    per_radical: int = 5
    train: int = 500
    val: int = 50
    test: int = 100
    pool_classes: int = 1000
    pool_train: int = 100
    pool_val: int = 10
    fillers: int = 64
    size: int = 32
    min_pool: int = 900
    augment: Augment = field(default_factory=Augment)

    def per_split(self, part: str) -> dict[str, int]:
        if part == "task":
            return {"train": self.train, "val": self.val, "test": self.test}
        return {"train": self.pool_train, "val": self.pool_val}

    def to_json(self) -> dict:
        return {**asdict(self), "augment": self.augment.to_json()}


FULL = BuildSpec()
TINY = BuildSpec(radicals=2, per_radical=5, train=40, val=10, test=20, pool_classes=30, pool_train=20, pool_val=5,
                 fillers=8, min_pool=30)  # the test suite's and the smoke benchmark's version



@dataclass(frozen=True)
class _Job:
    part: str
    split: str
    split_id: int
    label: int
    char: str
    count: int


_WORKER: dict = {}


def _faces_of(split: str) -> list[tuple[int, list[tuple[str, int]]]]:
    """(design index, its faces) of every design of ``split``, in catalogue order."""
    return [(i, list(d.faces)) for i, d in enumerate(han_fonts.DESIGNS) if d.split == split]


def _init_worker(seed: int, augment: Augment, size: int, fillers: list[str], face_ids: dict) -> None:
    _WORKER.update(seed=seed, augment=augment, size=size, fillers=fillers, face_ids=face_ids, glyphs={})


def _glyphs(path: str, index: int) -> Glyphs:
    key = (path, index)
    if key not in _WORKER["glyphs"]:
        _WORKER["glyphs"][key] = Glyphs(path, index)
    return _WORKER["glyphs"][key]


def _render_job(job: _Job) -> tuple[_Job, np.ndarray, np.ndarray]:
    """The images of one class in one split: each from a design drawn uniformly, a face of it drawn
    uniformly, and its own seeded generator."""
    seed, aug, size, fillers = _WORKER["seed"], _WORKER["augment"], _WORKER["size"], _WORKER["fillers"]
    designs = _faces_of(job.split)
    images = np.zeros((job.count, 1, size, size), dtype=np.uint8)
    faces = np.zeros(job.count, dtype=np.int16)
    part_id = 0 if job.part == "task" else 1
    for n in range(job.count):
        rng = np.random.default_rng([seed, part_id, job.split_id, job.label, n])
        _, design_faces = designs[int(rng.integers(len(designs)))]
        path, index = design_faces[int(rng.integers(len(design_faces)))]
        glyphs = _glyphs(path, index)
        filler = (glyphs, fillers) if fillers else None
        images[n, 0] = render(glyphs, job.char, rng, aug, size=size, filler=filler)
        faces[n] = _WORKER["face_ids"][(path, index)]
    return job, images, faces


def _coverage(faces: list[tuple[str, int]]):
    """A function: does every one of ``faces`` draw this character (cached per character)?"""
    loaded = [Glyphs(p, i) for p, i in faces]
    cache: dict[str, bool] = {}

    def covered(char: str) -> bool:
        if char not in cache:
            cache[char] = all(g.has(char) for g in loaded)
        return cache[char]
    return covered


def _software() -> dict:
    import PIL
    from PIL import features

    import askexpert

    return {"askexpert": askexpert.__version__, "pillow": PIL.__version__,
            "freetype": features.version("freetype2"), "numpy": np.__version__}


def build(root: Path | None = None, *, seed: int = 0, spec: BuildSpec = FULL, workers: int | None = None,
          force: bool = False, unihan: Path | None = None, console=None) -> Path:
    """Render the task and the pool into ``root/han100`` (default: the user cache); returns the directory.

    A finished build is kept unless ``force``; its manifest says how it was made."""
    from askexpert.console import stderr_console

    console = console or stderr_console()
    out = default_directory(root)
    if (out / "manifest.json").is_file() and not force:
        console.log(f"{TASK} is already built in {out} (--force builds it again)")
        return out
    han_fonts.require_installed()
    started = time.perf_counter()
    table = read_unihan(unihan) if unihan else read_unihan()
    cands = candidates(table)
    every_face = [f for d in han_fonts.DESIGNS for f in d.faces]
    train_faces = [f for d in han_fonts.designs("train") for f in d.faces]
    rng = np.random.default_rng([seed, 7])
    choice = choose(cands, radicals=spec.radicals, per_radical=spec.per_radical, pool=spec.pool_classes,
                    fillers=spec.fillers, covered_everywhere=_coverage(every_face),
                    covered_in_training=_coverage(train_faces), rng=rng, min_pool=spec.min_pool)
    console.log(f"{len(cands)} candidate characters; task {len(choice.task)} classes in {len(choice.radicals)} "
                f"radical groups, pool {len(choice.pool)} classes, {len(choice.fillers)} fillers")
    face_ids = {f: i for i, f in enumerate(every_face)}
    jobs = []
    for part, classes in (("task", choice.task), ("pool", choice.pool)):
        for split_id, (split, count) in enumerate(spec.per_split(part).items()):
            jobs += [_Job(part, split, split_id, label, c.char, count) for label, c in enumerate(classes)]
    out.mkdir(parents=True, exist_ok=True)
    init = (seed, spec.augment, spec.size, [c.char for c in choice.fillers], face_ids)
    total = sum(j.count for j in jobs)
    arrays = _render(jobs, init, max(1, workers or min(os.cpu_count() or 1, 8)), total, console)
    files = _write_splits(out, arrays, np.asarray(choice.coarse, dtype=np.int64))
    pool_train = arrays[("pool", "train")]
    pixels = np.concatenate([v[0] for v in pool_train.values()]).astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    manifest = _manifest(seed, spec, choice, every_face, face_ids, files, mean, std, time.perf_counter() - started)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    contact_sheet(out)
    console.log(f"{TASK}: {total:,} images in {time.perf_counter() - started:.0f} s -> {out}")
    return out


def _render(jobs: list[_Job], init: tuple, workers: int, total: int,
            console) -> dict[tuple[str, str], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Every job's images and faces, by (part, split) and label: in ``workers`` processes (or this one)."""
    from askexpert.console import progress_bar

    arrays: dict[tuple[str, str], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    with progress_bar(console) as progress:
        task = progress.add_task(f"rendering {total:,} images", total=total, info="")
        if workers == 1:
            _init_worker(*init)
            results = map(_render_job, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=init)
            results = pool.imap_unordered(_render_job, jobs, chunksize=4)
        try:
            for job, images, faces in results:
                arrays.setdefault((job.part, job.split), {})[job.label] = (images, faces)
                progress.advance(task, job.count)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return arrays


def _write_splits(out: Path, arrays: dict, coarse: np.ndarray) -> dict:
    """One ``PART-SPLIT.npz`` a split (images, labels, faces; the task's coarse labels), each file's count and
    sha256 returned for the manifest."""
    files = {}
    for (part, split), by_label in sorted(arrays.items()):
        labels = np.concatenate([np.full(len(by_label[k][0]), k, dtype=np.int64) for k in sorted(by_label)])
        data = {"images": np.concatenate([by_label[k][0] for k in sorted(by_label)]), "labels": labels,
                "faces": np.concatenate([by_label[k][1] for k in sorted(by_label)])}
        if part == "task":
            data["coarse"] = coarse[labels]
        path = out / f"{part}-{split}.npz"
        np.savez_compressed(path, **data)
        files[path.name] = {"images": len(labels), "sha256": han_fonts.sha256_file(path)}
    return files


def _manifest(seed: int, spec: BuildSpec, choice, every_face, face_ids, files, mean, std, seconds) -> dict:
    radical_names = radical_chars()
    designs = []
    for d in han_fonts.DESIGNS:
        faces = []
        for path, index in d.faces:
            faces.append({"id": face_ids[(path, index)], "file": path, "index": index,
                          "name": Glyphs(path, index).name, "sha256": han_fonts.sha256_file(path)})
        designs.append({"design": d.name, "style": d.style, "split": d.split, "note": d.note,
                        "packages": list(d.packages), "faces": faces})
    return {
        "format": FORMAT_VERSION, "name": TASK, "seed": seed, "spec": spec.to_json(),
        "made_by": "askexpert data build han100 (rendered by code from the fonts below; nothing downloaded)",
        "classes": [c.to_json() for c in choice.task],
        "coarse_names": [f"{radical_names.get(r, '?')} radical {r}" for r in choice.radicals],
        "coarse_radicals": choice.radicals,
        "pool_classes": [c.to_json() for c in choice.pool],
        "fillers": [c.char for c in choice.fillers],
        "designs": designs,
        "packages": [han_fonts.package_record(p) for p in [*han_fonts.packages(), "unicode-data"]],
        "splits": {part: {split: [d["design"] for d in designs if d["split"] == split] for split in splits}
                   for part, splits in PARTS.items()},
        "mean": mean, "std": std, "files": files, "software": _software(), "seconds": seconds,
    }


def contact_sheet(directory: Path, *, classes: int = 10, per_split: int = 6, scale: int = 3) -> Path:
    """``samples.png``: a row per class (the first ``classes``), ``per_split`` images of each split."""
    from PIL import Image

    rows = []
    splits = [load_part(directory, "task", split) for split in PARTS["task"]]
    for label in range(classes):
        cells = []
        for data in splits:
            idx = np.flatnonzero(data["labels"] == label)[:per_split]
            cells += [data["images"][i, 0] for i in idx]
            cells.append(np.full_like(data["images"][0, 0], 255)[:, :4])  # a gap between splits
        if cells:
            rows.append(np.concatenate(cells, 1))
    sheet = np.concatenate(rows, 0) if rows else np.zeros((1, 1), dtype=np.uint8)
    path = directory / "samples.png"
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.Resampling.NEAREST
                                  ).save(path)
    return path

