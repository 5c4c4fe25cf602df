"""Datasets: the real Fashion-MNIST files, CIFAR and image-folder fixtures in their exact formats,
download over real HTTP, splits, augmentation and clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import make_tar_gz, write_cifar10, write_cifar100, write_fmnist_subset
from PIL import Image

from askexpert.config import DataConfig
from askexpert.data import (
    InputSpec,
    augment_batch,
    cifar,
    fashion_mnist,
    iter_batches,
    load_dataset,
    stratified_split,
    to_model_input,
)
from askexpert.errors import DatasetError


def test_fashion_mnist_real_files(fmnist_dir):
    bundle = load_dataset(DataConfig(name="fashion-mnist", download=False))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.class_names[0] == "T-shirt/top" and bundle.num_classes == 10
    assert bundle.train.images.shape[1:] == (1, 28, 28) and bundle.train.images.dtype == torch.uint8
    # stratified validation split: 600 images of every class, and real (not constant) images
    assert torch.bincount(bundle.val.labels).tolist() == [600] * 10
    assert bundle.test.images.float().std() > 50


def test_validation_split_is_deterministic_disjoint_and_seeded(fmnist_dir):
    images, labels = fashion_mnist.load_split(fmnist_dir, "train")
    keep_a, held_a = stratified_split(labels, 0.1, seed=0)
    keep_b, held_b = stratified_split(labels, 0.1, seed=0)
    _, held_c = stratified_split(labels, 0.1, seed=1)
    assert np.array_equal(held_a, held_b) and np.array_equal(keep_a, keep_b)
    assert not np.array_equal(held_a, held_c)
    assert len(np.intersect1d(keep_a, held_a)) == 0 and len(keep_a) + len(held_a) == len(labels)


def test_subsets_are_stratified(fmnist_dir):
    bundle = load_dataset(DataConfig(train_subset=1000, val_subset=500, test_subset=300, download=False))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1000, 500, 300)
    assert torch.bincount(bundle.train.labels).tolist() == [100] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [30] * 10


def test_missing_fashion_mnist_names_all_three_fixes(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="fashion-mnist", root=tmp_path, download=False))
    text = str(err.value)
    assert "\n" not in text
    assert "apt-get install dataset-fashion-mnist" in text and "ASKEXPERT_DATA" in text
    assert "network" in text


def test_fashion_mnist_download_over_http(tmp_path, fmnist_dir, http_server, monkeypatch):
    mirror = write_fmnist_subset(tmp_path / "mirror", fmnist_dir, n_train=300, n_test=100)
    monkeypatch.setenv("ASKEXPERT_FASHION_MNIST_MIRROR", http_server(mirror))
    bundle = load_dataset(DataConfig(root=tmp_path / "data", val_fraction=0.2))
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (300, 100)
    assert (tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
    real, _ = fashion_mnist.load_split(fmnist_dir, "test")
    assert torch.equal(bundle.test.images, real[:100])


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ASKEXPERT_FASHION_MNIST_MIRROR", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(DatasetError, match="download failed.*apt-get install"):
        load_dataset(DataConfig(root=tmp_path))


def test_truncated_idx_file_is_detected(tmp_path, fmnist_dir):
    directory = write_fmnist_subset(tmp_path / "fm", fmnist_dir, n_train=50, n_test=20)
    path = directory / "t10k-images-idx3-ubyte.gz"
    import gzip

    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="truncated or damaged"):
        load_dataset(DataConfig(root=directory, download=False))


def test_cifar100_standard_format_with_coarse_labels(tmp_path):
    write_cifar100(tmp_path, n_train=200, n_test=100)
    bundle = load_dataset(DataConfig(name="cifar100", root=tmp_path, download=False))
    assert bundle.num_classes == 100 and len(bundle.coarse_names) == 20
    assert len(bundle.train) + len(bundle.val) == 200 and len(bundle.test) == 100
    assert bundle.train.images.shape[1:] == (3, 32, 32)
    # coarse labels travel with their images through the split
    assert torch.equal(bundle.train.coarse_labels, bundle.train.labels // 5)
    assert torch.equal(bundle.test.coarse_labels, bundle.test.labels // 5)


def test_cifar_image_layout_is_channel_planes(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=20)
    import pickle

    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    bundle = load_dataset(DataConfig(name="cifar10", root=tmp_path, download=False))
    # the first 1024 bytes of a row are the red plane, row-major
    assert torch.equal(bundle.test.images[0, 0].flatten(), torch.from_numpy(raw[0, :1024]))
    assert bundle.class_names[3] == "cat" and len(bundle.train) + len(bundle.val) == 100


def test_cifar_download_extracts_and_checks_md5(tmp_path, http_server):
    src = tmp_path / "src"
    archive = make_tar_gz(write_cifar100(src), tmp_path / "cifar-100-python.tar.gz")
    url = http_server(tmp_path) + archive.name
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    directory = cifar.locate(cifar.CIFAR100, tmp_path / "dl", url=url, md5=md5)
    assert (directory / "meta").is_file()
    with pytest.raises(DatasetError, match="download failed"):
        cifar.locate(cifar.CIFAR100, tmp_path / "dl2", url=url, md5="0" * 32)


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cifar100 not found.*fix: .*cifar-100-python.tar.gz"):
        load_dataset(DataConfig(name="cifar100", root=tmp_path, download=False))


def _write_folder(root, classes=("cat", "dog", "owl"), per_class=6, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((size[1], size[0], 3), 60 * c, dtype=np.uint8) + rng.integers(0, 20, (size[1], size[0], 3),
                                                                                     dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder_flat_layout(tmp_path):
    _write_folder(tmp_path / "imgs")
    bundle = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'imgs'}", val_fraction=0.2),
                          image_size=16, channels=3)
    assert bundle.class_names == ["cat", "dog", "owl"]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 18
    images, labels = next(iter_batches(bundle.test, 8))
    assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8
    # class c was drawn around 60*c: decoding kept the pixel values
    assert abs(float(images[labels == 2].float().mean()) - 129.5) < 10


def test_file_split_take_keeps_coarse_labels(tmp_path):
    from askexpert.data import FileSplit

    _write_folder(tmp_path / "imgs")
    paths = sorted((tmp_path / "imgs").rglob("*.png"))
    split = FileSplit(paths, torch.arange(len(paths)) % 3, 16, 3, coarse_labels=torch.arange(len(paths)) % 2)
    part = split.take([1, 4, 5])
    assert part.labels.tolist() == [1, 1, 2] and part.coarse_labels.tolist() == [1, 0, 1]


def test_image_folder_train_test_layout_and_errors(tmp_path):
    _write_folder(tmp_path / "ds" / "train")
    _write_folder(tmp_path / "ds" / "test", per_class=2)
    bundle = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'ds'}"), image_size=8, channels=1)
    assert len(bundle.test) == 6 and bundle.channels == 1
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'nope'}"))
    (tmp_path / "ds" / "train" / "cat" / "0.png").write_bytes(b"not a png")
    broken = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'ds'}", val_fraction=0.1), image_size=8)
    assert "1 unreadable" in broken.summary()["files"] and "0.png" in broken.summary()["files"]
    with pytest.raises(DatasetError, match="cannot decode image"):
        list(iter_batches(broken.train, 64))
        list(iter_batches(broken.val, 64))


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(DatasetError, match="did you mean 'fashion-mnist'"):
        load_dataset(DataConfig(name="fashion-mnst"))


def test_crop_flip_moves_pixels_but_keeps_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    y = augment_batch(x, "crop-flip", g)
    assert y.shape == x.shape and not torch.equal(x, y)
    # every output image is a shifted and possibly mirrored copy: pixel mass only lost at the border
    assert (y.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()
    again = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_random_resized_crop_and_model_input():
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    spec = InputSpec(channels=3, size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = to_model_input(x, spec, augment="rrc-flip", generator=torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 64, 64)
    gray = to_model_input(x[:, :1], spec)  # grayscale replicated to three channels
    assert torch.equal(gray[:, 0], gray[:, 2])
    plain = to_model_input(x, InputSpec(channels=3, size=32, mean=(0.0,) * 3, std=(1.0,) * 3))
    assert torch.allclose(plain * 255, x.float(), atol=1e-3)


@pytest.mark.parametrize("policy", ["crop", "rrc"])
def test_crop_without_flip_never_mirrors(policy):
    """crop / rrc draw exactly what crop-flip / rrc-flip draw, without the mirror: each output equals the
    flipping policy's output, mirrored back where that one mirrored."""
    x = torch.rand(64, 1, 28, 28)
    plain = augment_batch(x, policy, torch.Generator().manual_seed(3))
    flipped = augment_batch(x, f"{policy}-flip", torch.Generator().manual_seed(3))
    same = [torch.allclose(plain[i], flipped[i], atol=1e-5) for i in range(64)]
    mirrored = [torch.allclose(plain[i], flipped[i].flip(-1), atol=1e-5) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54 and not torch.equal(plain, x)  # the flipping policy did mirror; this one moved


def test_image_folder_defaults_follow_the_files(tmp_path):
    """augment: auto and the reported size and channels come from the files: small grayscale PNGs are
    shifted, never mirrored unless data.flip says a mirrored image keeps its class; large colour photos
    get resized crops. Whatever the model decodes them to, the summary says what they are."""
    from askexpert.data.imagefolder import survey

    _write_folder(tmp_path / "small", size=(28, 28))  # RGB files whose pixels are grey: still RGB files
    small = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'small'}", val_fraction=0.2),
                         image_size=224, channels=3)
    s = small.summary()
    assert (s["image_size"], s["decoded_as"]) == (28, "3x224x224") and "28x28 px" in s["files"]
    assert small.augment_for("auto") == ("none", small.augment_reason) and "never mirrored" in small.augment_reason
    assert small.augment_for("rrc-flip") == ("rrc-flip", "train.augment")
    flips = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'small'}", val_fraction=0.2, flip=True))
    assert flips.default_augment == "flip"
    for i in range(4):  # grayscale files of mixed sizes
        (tmp_path / "big" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((300 + 20 * i, 200), np.uint8)).save(tmp_path / "big" / f"c{i % 2}" / f"{i}.png")
    for i in range(2):  # grey pictures saved as RGB files are grey
        Image.fromarray(np.full((300, 200, 3), 90 + i, np.uint8)).save(tmp_path / "big" / "c0" / f"rgb{i}.png")
    files = survey(sorted((tmp_path / "big").rglob("*.png")))
    assert files.modes == {"L": 4, "RGB (grey)": 2}
    assert files.channels == 1 and files.side == 200 and files.height == (300, 310, 360)
    assert "grayscale" in files.describe() and "200-200 x 300-360" in files.describe()
    big = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'big'}", val_fraction=0.4, test_fraction=0.4),
                       image_size=32, channels=1)
    assert big.default_augment == "rrc" and big.summary()["channels"] == 1


def test_built_in_sets_flip_unless_told_not_to(tmp_path, fmnist_dir):
    assert load_dataset(DataConfig()).default_augment == "flip"
    assert load_dataset(DataConfig(flip=False)).default_augment == "none"
    write_cifar10(tmp_path)
    assert load_dataset(DataConfig(name="cifar10", root=tmp_path)).default_augment == "crop-flip"
    assert load_dataset(DataConfig(name="cifar10", root=tmp_path, flip=False)).default_augment == "crop"
