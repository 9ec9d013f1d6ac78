"""Data sets as in-memory uint8 tensors with batched augmentation; the only floor besides train that knows Lightning.

``bitnetcnn.data.sources`` and ``catalog`` read the standard layouts without Lightning; ``ImageDataModule`` wraps them.
"""

from bitnetcnn.data.catalog import DATASETS, DatasetSpec, get_dataset_spec, list_datasets
from bitnetcnn.settings import cache_root, data_root
from bitnetcnn.data.sources import DatasetNotFoundError, Split

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Split",
    "cache_root",
    "data_root",
    "get_dataset_spec",
    "list_datasets",
]
