"""The reference code's phrase tower: word vectors, a 1-layer LSTM, max pooling over the phrase's words."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_wsg.models import LstmPhraseEncoder
from lightning_wsg.models.embeddings import GloveEmbeddings


def _expected(enc: LstmPhraseEncoder, vectors: list[torch.Tensor | None]) -> torch.Tensor:
    """The reference computation by hand: zeros for unknown words, their states left out of the max."""
    x = torch.stack([v if v is not None else torch.zeros(enc.words.dim) for v in vectors])[None]
    states, _ = enc.lstm(x)
    keep = [t for t, v in enumerate(vectors) if v is not None or t == 0]
    return F.normalize(enc.mlp(states[0, keep].max(dim=0).values), dim=-1)


def test_known_and_unknown_words_as_the_reference_code():
    torch.manual_seed(0)
    enc = LstmPhraseEncoder("glove-6b-50d", hidden_size=12, hidden_dim=16, embed_dim=8).eval()
    glove = GloveEmbeddings()
    words = ["A", "Red", "qwxzv", "ball", "near", "zzqqy", "xxkcd"]
    spans = [(0, 4), (5, 7), (4, 5)]
    with torch.no_grad():
        out = enc([words], [spans], num_phrases=4)
        exact = [glove.vector(w) if w.lower() in glove.index else None for w in words]
        for p, (s, e) in enumerate(spans):
            assert torch.allclose(out[0, p], _expected(enc, exact[s:e]), atol=1e-6), p
    assert exact[2] is None and exact[5] is None and exact[6] is None  # a phrase of unknown words only: step 0
    assert torch.equal(out[0, 3], torch.zeros(8))  # padding
    assert torch.allclose(out[0, :3].norm(dim=-1), torch.ones(3))


def test_phrases_keep_at_most_max_words_and_gradients_reach_the_lstm():
    torch.manual_seed(0)
    enc = LstmPhraseEncoder("glove-6b-50d", hidden_size=8, hidden_dim=16, embed_dim=8, max_words=3)
    long = ["the", "man", "in", "a", "red", "shirt"]
    out = enc([long, long[:3]], [[(0, 6)], [(0, 3)]], num_phrases=1)
    assert torch.allclose(out[0], out[1], atol=1e-6)  # words after the third are not read
    out.sum().backward()
    assert enc.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert not any("vectors" in k for k in enc.state_dict())  # the word vectors stay out of checkpoints


def test_a_glove_text_file(tmp_path):
    path = tmp_path / "glove.4d.txt"
    path.write_text("dog 1 0 0 0\nball 0 1 0 0\nred 0 0 1 0.5\nice cream 1 2 3 4\n")  # the last: a word with a space
    torch.manual_seed(0)
    enc = LstmPhraseEncoder(str(path), hidden_size=6, hidden_dim=8, embed_dim=4).eval()
    assert enc.words.dim == 4 and len(enc.words.index) == 4 and "ice cream" in enc.words.index
    vectors, known = enc.words.lookup([["Red", "Ball", "cat"]], 4)
    assert known.tolist() == [[True, True, False, False]]
    assert vectors[0, 0].tolist() == [0, 0, 1, 0.5] and vectors[0, 2].abs().sum() == 0
    with pytest.raises(
        FileNotFoundError,
        match=r"vectors='nope.txt': no such GloVe text file, and not a packaged name \(glove-6b-50d\)",
    ):
        LstmPhraseEncoder("nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 1 0\ncat x y\nfish 1\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: not a GloVe text line"):
        LstmPhraseEncoder(str(bad))
