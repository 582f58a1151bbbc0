"""Datasets and LightningDataModules: annotation formats live here and nowhere else."""

from .base import GroundingDataModule, GroundingDataset, GroundingEntry
from .batch import GroundingBatch, GroundingSample, collate
from .flickr30k_entities import Flickr30kEntitiesDataModule, Flickr30kFormatError
from .refcoco import RefCOCODataModule
from .sentences_file import SentencesFileDataModule
from .synthetic import SyntheticWorldDataModule

__all__ = [
    "GroundingDataModule",
    "GroundingDataset",
    "GroundingEntry",
    "Flickr30kEntitiesDataModule",
    "Flickr30kFormatError",
    "RefCOCODataModule",
    "SentencesFileDataModule",
    "SyntheticWorldDataModule",
    "GroundingSample",
    "GroundingBatch",
    "collate",
]
