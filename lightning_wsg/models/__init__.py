"""Plain ``nn.Module`` networks (no Lightning): region and phrase towers, the teacher.

Region towers (:class:`RegionTower`): :class:`RegionEncoder` (images: timm backbone +
RoIAlign + MLP) and :class:`FeatureRegionEncoder` (precomputed per-box features + MLP).
Phrase towers (:class:`PhraseTower`): :class:`PhraseEncoder` (transformers) and
:class:`LstmPhraseEncoder` (word vectors + LSTM + max pooling, the reference code's).

Example:
    >>> from lightning_wsg.models import RegionEncoder, PhraseEncoder, Teacher
    >>> teacher = Teacher(matching="lexical")
    >>> sum(p.numel() for p in teacher.parameters())
    0
"""

from .embeddings import GloveEmbeddings, MiniLMEmbeddings, resolve_model_path
from .feature_encoder import FeatureRegionEncoder
from .lstm_phrase_encoder import LstmPhraseEncoder, WordVectors
from .phrase_encoder import PhraseEncoder, span_token_indices
from .region_encoder import RegionEncoder
from .teacher import Teacher, phrase_texts
from .towers import PhraseTower, RecordsInitArgs, RegionTower, init_config

__all__ = [
    "RegionTower",
    "PhraseTower",
    "RecordsInitArgs",
    "init_config",
    "RegionEncoder",
    "FeatureRegionEncoder",
    "PhraseEncoder",
    "LstmPhraseEncoder",
    "WordVectors",
    "span_token_indices",
    "Teacher",
    "phrase_texts",
    "GloveEmbeddings",
    "MiniLMEmbeddings",
    "resolve_model_path",
]
