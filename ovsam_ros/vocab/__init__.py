"""Vocabularies, prompt templates, text embeddings and the checkpoints' base classes.

Only the light modules are re-exported; ``ovsam_ros.vocab.text_embeddings`` (torch, open_clip) is
imported where embeddings are computed.
"""

from ovsam_ros.vocab.base_classes import base_mask_for, base_vocabulary
from ovsam_ros.vocab.templates import VILD_TEMPLATES
from ovsam_ros.vocab.vocabulary import Vocabulary, VocabularyError, split_synonyms

__all__ = [
    "VILD_TEMPLATES", "Vocabulary", "VocabularyError", "base_mask_for", "base_vocabulary", "split_synonyms",
]
