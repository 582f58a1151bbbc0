"""Words for the teacher: head nouns of phrases, WordNet nouns, and class vocabularies."""

from .heads import head_noun, head_with_modifiers
from .wordnet import WordNetNouns

__all__ = ["WordNetNouns", "head_noun", "head_with_modifiers"]
