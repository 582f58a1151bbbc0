"""Datasets and LightningDataModules: annotation formats live here and nowhere else."""

from .base import GroundingDataModule, GroundingDataset, GroundingEntry
from .batch import GroundingBatch, GroundingSample, collate
from .flickr30k_entities import Flickr30kEntitiesDataModule, Flickr30kFormatError
from .refcoco import RefCOCODataModule
from .synthetic import SyntheticWorldDataModule

__all__ = [
    "GroundingDataModule",
    "GroundingDataset",
    "GroundingEntry",
    "Flickr30kEntitiesDataModule",
    "Flickr30kFormatError",
    "RefCOCODataModule",
    "SyntheticWorldDataModule",
    "GroundingSample",
    "GroundingBatch",
    "collate",
]
