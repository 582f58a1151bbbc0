"""Datasets and LightningDataModules: annotation formats live here and nowhere else."""
