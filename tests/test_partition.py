"""Class partitions: valid, balanced, deterministic; from confusion, coarse labels or a file."""

from __future__ import annotations

import pytest
import torch
from conftest import write_cifar100

from askexpert.cli import main
from askexpert.errors import ConfigError
from askexpert.training.partition import (
    Partition,
    confusion_affinity,
    partition_from_coarse,
    partition_from_confusion,
    partition_from_file,
)

NAMES = [f"c{i}" for i in range(10)]


def block_confusion(blocks, n=10, seed=0):
    """A confusion matrix where classes inside a block are confused with each other, others rarely."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 3, (n, n), generator=g).float()
    for block in blocks:
        for i in block:
            for j in block:
                c[i, j] += 40 + float(torch.randint(0, 10, (1,), generator=g))
    c += torch.eye(n) * 500
    return c


def test_confusion_partition_recovers_confused_groups():
    blocks = [[0, 2, 4, 6], [1, 3], [5, 7, 8, 9]]
    part = partition_from_confusion(block_confusion(blocks), NAMES, 3)
    assert part.experts == [[0, 2, 4, 6], [1, 3], [5, 7, 8, 9]]
    assert sorted(c for e in part.experts for c in e) == list(range(10))


@pytest.mark.parametrize("n_experts", [2, 3, 4, 5])
def test_partitions_are_valid_bounded_and_deterministic(n_experts):
    conf = block_confusion([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]], seed=n_experts)
    a = partition_from_confusion(conf, NAMES, n_experts)
    b = partition_from_confusion(conf.clone(), NAMES, n_experts)
    assert a.experts == b.experts and len(a.experts) == n_experts
    bound = a.details["max_size"]
    assert all(1 <= len(e) <= bound for e in a.experts)
    assert sorted(c for e in a.experts for c in e) == list(range(10))  # each class exactly once


def test_size_bound_splits_a_large_confused_group():
    conf = block_confusion([list(range(8))])
    part = partition_from_confusion(conf, NAMES, 2, max_size=5)
    assert all(len(e) <= 5 for e in part.experts)


def test_overlap_adds_the_most_confused_outside_class():
    conf = block_confusion([[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]])
    conf[2, 3] += 60  # class 2 is sometimes taken for class 3
    part = partition_from_confusion(conf, NAMES, 3, overlap=0.03)
    assert part.overlap and 2 in part.experts[0] and 2 in part.experts[1]
    plain = partition_from_confusion(conf, NAMES, 3)
    assert sum(map(len, part.experts)) > sum(map(len, plain.experts)) == 10


def test_holders_put_each_class_in_the_experts_it_is_confused_with():
    conf = block_confusion([[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]])
    conf[2, 3] += 60  # class 2 is taken for class 3, less often for class 8
    conf[2, 8] += 30
    two = partition_from_confusion(conf, NAMES, 3, holders=2)
    assert 2 in two.experts[0] and 2 in two.experts[1] and 2 not in two.experts[2]  # the most confused first
    assert two.details["core"] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    three = partition_from_confusion(conf, NAMES, 3, holders=3)
    assert all(2 in e for e in three.experts)
    assert sum(map(len, three.experts)) == three.details["class_slots"] > two.details["class_slots"]
    assert all(len([e for e in three.experts if c in e]) <= 3 for c in range(10))
    with pytest.raises(ConfigError, match="overlap of 4 experts a class with 3 experts.*fix: --holders from 1"):
        partition_from_confusion(conf, NAMES, 3, holders=4)


def test_impossible_requests_are_clear_errors():
    conf = block_confusion([[0, 1]])
    with pytest.raises(ConfigError, match="cannot split 10 classes into 11 experts"):
        partition_from_confusion(conf, NAMES, 11)
    with pytest.raises(ConfigError, match="cannot cover 10 classes"):
        partition_from_confusion(conf, NAMES, 2, max_size=4)


def test_coarse_partition_keeps_superclasses_whole():
    coarse_of_class = [c // 5 for c in range(100)]  # CIFAR-100 layout: 20 superclasses of 5
    names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"super{i}" for i in range(20)]
    by_order = partition_from_coarse(coarse_of_class, coarse_names, names, 4)
    assert [len(e) for e in by_order.experts] == [25, 25, 25, 25]
    conf = torch.eye(100) * 50 + 1
    for s in (0, 7, 13):  # superclasses 0, 7 and 13 are confused with each other
        for t in (0, 7, 13):
            conf[s * 5:(s + 1) * 5, t * 5:(t + 1) * 5] += 20
    by_confusion = partition_from_coarse(coarse_of_class, coarse_names, names, 5, confusion=conf)
    for expert in by_confusion.experts:
        assert len({c // 5 for c in expert}) * 5 == len(expert)  # whole superclasses only
    holder = next(e for e in by_confusion.experts if 0 in e)
    assert 35 in holder and 65 in holder


def test_partition_file_by_names_and_ids(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("experts:\n  - [c0, c1, 2]\n  - [c3, c4, c5, c6]\n  - [7, 8, c9]\n")
    part = partition_from_file(f, NAMES)
    assert part.experts == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]] and part.method == "file"
    f.write_text("experts:\n  - [c0, nope]\n")
    with pytest.raises(ConfigError, match="unknown class 'nope'"):
        partition_from_file(f, NAMES)
    f.write_text("experts:\n  - [c0, c1]\n")
    with pytest.raises(ConfigError, match="leaves classes .* to no expert"):
        partition_from_file(f, NAMES)


def test_partition_roundtrip_and_bad_file(tmp_path):
    part = partition_from_confusion(block_confusion([[0, 1, 2]]), NAMES, 3)
    path = part.save(tmp_path / "part.json")
    assert Partition.load(path) == part
    path.write_text("{]")
    with pytest.raises(ConfigError, match="not a partition file"):
        Partition.load(path)


def test_affinity_is_symmetric_with_zero_diagonal():
    a = confusion_affinity(block_confusion([[0, 1]]))
    assert torch.allclose(a, a.t()) and float(a.diagonal().abs().sum()) == 0


@pytest.mark.slow
def test_coarse_partition_from_real_cifar100_files(tmp_path):
    """A generalist trained on files in the cifar-100-python format, partitioned by superclass."""
    write_cifar100(tmp_path / "data", n_train=400, n_test=100)
    args = ["train", "generalist", "--data", "cifar100", "--data-root", str(tmp_path / "data"), "--model",
            "vit-edge-32", "--epochs", "1", "--output-dir", str(tmp_path / "runs"), "--name", "c100",
            "--set", "model.kwargs.depth=1", "--set", "model.kwargs.embed_dim=32", "--set", "model.kwargs.num_heads=2",
            "--set", "data.val_fraction=0.5"]
    assert main(args) == 0
    assert main(["partition", str(tmp_path / "runs" / "c100"), "--method", "coarse", "--num-experts", "4"]) == 0
    part = Partition.load(tmp_path / "runs" / "c100" / "partition-coarse-4.json")
    assert part.method == "coarse" and len(part.experts) == 4
    assert sorted(c for e in part.experts for c in e) == list(range(100))
    for expert in part.experts:  # the fixture's superclass of fine class c is c // 5
        assert len({c // 5 for c in expert}) * 5 == len(expert)
