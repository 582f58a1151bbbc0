"""Plain ``nn.Module`` networks (no Lightning): region and phrase encoders, the teacher.

Example:
    >>> from lightning_wsg.models import RegionEncoder, PhraseEncoder, Teacher
    >>> teacher = Teacher(matching="lexical")
    >>> sum(p.numel() for p in teacher.parameters())
    0
"""

from .embeddings import GloveEmbeddings, MiniLMEmbeddings, resolve_model_path
from .phrase_encoder import PhraseEncoder, span_token_indices
from .region_encoder import RegionEncoder
from .teacher import Teacher, phrase_texts

__all__ = [
    "RegionEncoder",
    "PhraseEncoder",
    "span_token_indices",
    "Teacher",
    "phrase_texts",
    "GloveEmbeddings",
    "MiniLMEmbeddings",
    "resolve_model_path",
]
