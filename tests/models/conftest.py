"""Shared fixtures of the model tests: the offline MiniLM tokenizer."""

import pytest
from transformers import AutoTokenizer

from lightning_wsg.models.embeddings import resolve_model_path


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
