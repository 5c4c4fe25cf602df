"""Datasets: real files in, seeded train / validation / test splits of uint8 images out."""

from askexpert.data.base import ArraySplit, DatasetSplits, FileSplit, ImageSplit, iter_batches
from askexpert.data.registry import DATASETS, load_dataset
from askexpert.data.transforms import InputSpec, augment_batch, to_model_input
from askexpert.splits import stratified_split, stratified_subset

__all__ = [
    "ArraySplit", "DatasetSplits", "FileSplit", "ImageSplit", "iter_batches", "DATASETS", "load_dataset",
    "stratified_split", "stratified_subset", "InputSpec", "augment_batch", "to_model_input",
]  # fmt: skip
