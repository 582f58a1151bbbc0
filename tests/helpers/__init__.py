"""Test helpers shared by the suite (importable as ``helpers`` from tests)."""
