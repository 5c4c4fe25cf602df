"""Class partitions: which classes each expert specialises in.

Four sources: the generalist's confusion on the validation split (classes it confuses go to the
same expert), coarse labels (CIFAR-100's superclasses, grouped), a seeded random deal (the control
for the confusion partition), or a hand-written YAML file. The
grouping is agglomerative clustering with average linkage over a symmetric confusion affinity and
a maximum group size, which keeps the experts balanced, and a minimum one (default 2: a one-class
expert is right by construction and says nothing about specialisation); it is deterministic (ties go to the pair
with the lowest ids). Optionally a class also joins the other experts it is most confused with (up to
``holders`` experts hold it: overlapping subsets).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from askexpert.config import read_yaml
from askexpert.contract.schema import DEFAULT_MIN_SIZE, Partition
from askexpert.errors import ConfigError

__all__ = ["Partition", "make_partition", "confusion_affinity", "agglomerate", "add_overlap",
           "partition_from_confusion", "partition_from_coarse", "partition_from_random", "partition_from_file"]


def confusion_affinity(confusion: torch.Tensor) -> torch.Tensor:
    """Symmetric affinity from a confusion matrix (rows: truth): mean of P(pred j | i) and P(pred i | j)."""
    c = confusion.float()
    p = c / c.sum(1, keepdim=True).clamp_min(1)
    a = (p + p.t()) / 2
    a.fill_diagonal_(0)
    return a


def default_max_size(n_items: int, n_groups: int) -> int:
    return max(1, math.ceil(1.5 * n_items / n_groups))


def _packable(sizes: list[int], n_groups: int, max_size: int, min_size: int = 1) -> bool:
    """Whether groups of these sizes can still be merged into ``n_groups`` groups of ``min_size`` to
    ``max_size`` items (heuristics: first-fit decreasing, and largest-first onto the least-filled
    group; they may miss a packing, never invent one)."""
    bins: list[int] = []
    for size in sorted(sizes, reverse=True):
        for i, used in enumerate(bins):
            if used + size <= max_size:
                bins[i] += size
                break
        else:
            bins.append(size)
    if len(bins) <= n_groups and min_size <= 1:
        return True
    if len(bins) == n_groups and min(bins) >= min_size:
        return True
    if min_size <= 1:
        return False
    loads = [0] * n_groups
    for size in sorted(sizes, reverse=True):
        i = loads.index(min(loads))
        if loads[i] + size > max_size:
            return False
        loads[i] += size
    return min(loads) >= min_size


def agglomerate(affinity: torch.Tensor, n_groups: int, max_size: int, min_size: int = 1) -> list[list[int]]:
    """Merge items into ``n_groups`` groups of ``min_size`` to ``max_size`` items: average linkage,
    deterministic.

    Each step merges the pair with the highest mean affinity among the merges that keep the rest
    packable into ``n_groups`` such groups (so a greedy early merge never strands the last groups,
    and no item is left alone when ``min_size`` is 2).
    """
    n = affinity.shape[0]
    if not 1 <= n_groups <= n:
        raise ConfigError(f"cannot split {n} classes into {n_groups} experts", fix=f"use 1 to {n} experts")
    if n_groups * max_size < n:
        raise ConfigError(f"{n_groups} experts of at most {max_size} classes cannot cover {n} classes",
                          fix="raise the maximum expert size or the number of experts")
    if min_size > max_size or n_groups * min_size > n:
        raise ConfigError(f"{n_groups} experts of at least {min_size} classes need {n_groups * min_size} classes "
                          f"(there are {n}, at most {max_size} an expert)",
                          fix=f"use at most {n // max(min_size, 1)} experts, or a smaller minimum size (--min-size 1 "
                          "allows one-class experts)")
    groups = [[i] for i in range(n)]
    a = affinity.double()
    while len(groups) > n_groups:
        best, best_pair = -1.0, None
        sizes = [len(g) for g in groups]
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if sizes[i] + sizes[j] > max_size:
                    continue
                rest = [sz for t, sz in enumerate(sizes) if t not in (i, j)] + [sizes[i] + sizes[j]]
                if not _packable(rest, n_groups, max_size, min_size):
                    continue
                score = float(a[groups[i]][:, groups[j]].mean())
                if score > best + 1e-12:
                    best, best_pair = score, (i, j)
        if best_pair is None:
            raise ConfigError(f"no merge keeps experts within {min_size} to {max_size} classes",
                              fix="raise the maximum expert size, or lower --min-size")
        i, j = best_pair
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    return sorted(groups, key=lambda g: g[0])


def check_holders(holders: int, n_experts: int) -> None:
    """An overlap of ``holders`` experts a class: at least 1 (no overlap), at most every expert."""
    if not 1 <= holders <= n_experts:
        raise ConfigError(f"an overlap of {holders} experts a class with {n_experts} experts: a class is held by "
                          f"1 to {n_experts} of them", fix=f"--holders from 1 (no overlap) to {n_experts}")


def add_overlap(groups: list[list[int]], affinity: torch.Tensor, threshold: float | None,
                holders: int = 2) -> list[list[int]]:
    """Each class also joins the ``holders - 1`` other groups it is most confused with (its largest affinity to
    any of their classes; ties: the lower group), those whose affinity is at least ``threshold`` (None: any
    confusion at all, an affinity above 0), so that up to ``holders`` experts hold it (Hinton et al. 2015:
    specialists covering a class together)."""
    check_holders(holders, len(groups))
    out = [list(g) for g in groups]
    for gi, group in enumerate(groups):
        for c in group:
            scores = sorted(((float(affinity[c, other].max()), hi) for hi, other in enumerate(groups) if hi != gi),
                            key=lambda t: (-t[0], t[1]))
            for score, hi in scores[: holders - 1]:
                if (score > 0 if threshold is None else score >= threshold) and c not in out[hi]:
                    out[hi].append(c)
    return [sorted(g) for g in out]


def partition_from_confusion(confusion: torch.Tensor, class_names: list[str], n_experts: int, *,
                             max_size: int | None = None, min_size: int = DEFAULT_MIN_SIZE,
                             overlap: float | None = None, holders: int = 1) -> Partition:
    """Groups of confused classes (``max_size`` bounds the core groups); with ``overlap`` (a threshold) or
    ``holders`` > 1, each class also joins the other groups it is most confused with (:func:`add_overlap`)."""
    check_holders(holders, n_experts)
    if overlap is not None and holders == 1:
        holders = 2  # the earlier meaning of --overlap alone: one more expert, above the threshold
    aff = confusion_affinity(confusion)
    max_size = max_size or default_max_size(len(class_names), n_experts)
    core = agglomerate(aff, n_experts, max_size, min_size)
    groups = add_overlap(core, aff, overlap, holders) if holders > 1 else core
    return Partition(method="confusion", class_names=class_names, experts=groups, overlap=holders > 1,
                     details={"max_size": max_size, "min_size": min_size, "overlap_threshold": overlap,
                              "holders": holders, "core": core,
                              "class_slots": sum(map(len, groups))}).check()


def partition_from_coarse(coarse_of_class: list[int], coarse_names: list[str], class_names: list[str],
                          n_experts: int, *, confusion: torch.Tensor | None = None, max_size: int | None = None,
                          overlap: float | None = None) -> Partition:
    """Group superclasses into experts: by confusion between superclasses when given, else in order."""
    n_coarse = len(coarse_names)
    members = [[c for c, s in enumerate(coarse_of_class) if s == k] for k in range(n_coarse)]
    max_size = max_size or default_max_size(n_coarse, n_experts)
    if confusion is not None:
        fine_aff = confusion_affinity(confusion)
        coarse_aff = torch.zeros(n_coarse, n_coarse)
        for i in range(n_coarse):
            for j in range(n_coarse):
                if i != j:
                    coarse_aff[i, j] = fine_aff[members[i]][:, members[j]].mean()
        coarse_groups = agglomerate(coarse_aff, n_experts, max_size)
    else:
        per = math.ceil(n_coarse / n_experts)
        coarse_groups = [list(range(k, min(k + per, n_coarse))) for k in range(0, n_coarse, per)]
    groups = [sorted(c for k in g for c in members[k]) for g in coarse_groups]
    if overlap is not None and confusion is not None:
        groups = add_overlap(groups, confusion_affinity(confusion), overlap)
    return Partition(method="coarse", class_names=class_names, experts=groups, overlap=overlap is not None,
                     details={"superclasses": [[coarse_names[k] for k in g] for g in coarse_groups],
                              "max_size": max_size}).check()


def partition_from_random(class_names: list[str], n_experts: int, *, seed: int = 0,
                          min_size: int = DEFAULT_MIN_SIZE) -> Partition:
    """Classes dealt at random (seeded) into ``n_experts`` groups as equal as sizes allow: the control for a
    confusion partition (does grouping the confused classes matter?)."""
    import numpy as np

    n = len(class_names)
    if n_experts * min_size > n:
        raise ConfigError(f"{n_experts} experts of at least {min_size} classes need {n_experts * min_size} classes "
                          f"(there are {n})", fix="use fewer experts, or a smaller --min-size")
    order = np.random.default_rng(seed).permutation(n)
    groups = [sorted(int(c) for c in chunk) for chunk in np.array_split(order, n_experts)]
    return Partition(method="random", class_names=class_names, experts=sorted(groups, key=lambda g: g[0]),
                     overlap=False, details={"seed": seed, "min_size": min_size}).check()


def partition_from_file(path: Path, class_names: list[str]) -> Partition:
    """A hand-written YAML file: ``experts:`` a list of lists of class names or ids."""
    data = read_yaml(path)
    experts = data.get("experts")
    if not isinstance(experts, list) or not all(isinstance(e, list) for e in experts):
        raise ConfigError(f"{path} needs 'experts:' as a list of class lists",
                          fix="write experts: [[T-shirt/top, Shirt], [Trouser], ...]")
    index = {name: i for i, name in enumerate(class_names)}
    groups = []
    for e, items in enumerate(experts):
        ids = []
        for item in items:
            if isinstance(item, int):
                ids.append(item)
            elif str(item) in index:
                ids.append(index[str(item)])
            else:
                raise ConfigError(f"{path}: expert {e} names unknown class {item!r}",
                                  fix=f"use class ids or names among: {', '.join(class_names)}")
        groups.append(sorted(ids))
    overlap = len({c for g in groups for c in g}) < sum(len(g) for g in groups)
    return Partition(method="file", class_names=class_names, experts=groups, overlap=overlap,
                     details={"file": str(path)}).check()


def make_partition(generalist: Path, n_experts: int, *, method: str = "confusion", file: Path | None = None,
                   max_size: int | None = None, min_size: int = DEFAULT_MIN_SIZE, overlap: float | None = None,
                   device: str = "auto", seed: int = 0, holders: int = 1) -> Partition:
    """A partition of the generalist's classes, from its validation confusion, coarse labels or a file;
    ``holders`` (confusion only): up to that many experts hold a class (overlapping subsets)."""
    check_holders(holders, n_experts)
    if holders > 1 and method != "confusion":
        raise ConfigError(f"--holders {holders} overlaps the subsets from the generalist's confusions",
                          fix="use it with --method confusion")
    from askexpert.data import load_dataset
    from askexpert.models import open_checkpoint
    from askexpert.training.logits import cached_logits, data_config_of

    gen = open_checkpoint(generalist)
    meta = gen.meta
    names = meta.class_names
    if method == "file":
        if file is None:
            raise ConfigError("--method file needs --file PATH", fix="pass the YAML file of expert class lists")
        return partition_from_file(file, names)
    if method == "random":
        part = partition_from_random(names, n_experts, seed=seed, min_size=min_size)
        part.details["generalist"] = str(generalist)
        return part
    logits, labels = cached_logits(gen, "val", device=device)
    n = len(names)
    confusion = torch.bincount(labels * n + logits.argmax(1), minlength=n * n).reshape(n, n)
    if method == "confusion":
        part = partition_from_confusion(confusion, names, n_experts, max_size=max_size, min_size=min_size,
                                        overlap=overlap, holders=holders)
    elif method == "coarse":
        splits = load_dataset(data_config_of(gen), image_size=meta.model.input.size,
                              channels=meta.model.input.channels)
        if not splits.coarse_names or splits.train.coarse_labels is None:
            raise ConfigError(f"{splits.name} has no coarse labels", fix="use --method confusion or --method file")
        fine = torch.cat([s.labels for s in (splits.train, splits.val, splits.test)])
        coarse = torch.cat([s.coarse_labels for s in (splits.train, splits.val, splits.test)])
        absent = [names[c] for c in range(n) if not (fine == c).any()]
        if absent:
            raise ConfigError(f"classes {absent[:5]} have no images, so their superclass is unknown",
                              fix="use the full dataset, or --method file")
        coarse_of_class = [int(torch.mode(coarse[fine == c]).values) for c in range(n)]
        part = partition_from_coarse(coarse_of_class, splits.coarse_names, names, n_experts, confusion=confusion,
                                     max_size=max_size, overlap=overlap)
    else:
        raise ConfigError(f"unknown partition method {method!r}", fix="use confusion, coarse, random or file")
    part.details["generalist"] = str(generalist)
    part.details["generalist_sha256"] = meta.weights_sha256
    return part
