"""The prompt templates class names are embedded with.

The released OVSAM averages each synonym's embedding over these 14 ViLD templates (Gu et al., "Open-vocabulary
Object Detection via Vision and Language Knowledge Distillation", 2021), in this order and with this exact
punctuation (some end without a full stop); changing any character changes the text embeddings the
checkpoints were trained against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


class TemplateError(ValueError):
    """A template set that cannot be used; the message says why."""


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates as a tuple, each with exactly one ``{}`` slot for the class name."""
    if isinstance(templates, str) or not templates:
        raise TemplateError("templates must be a non-empty list of strings")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1 or any(c in t.replace("{}", "") for c in "{}"):
            raise TemplateError(f"template {t!r} must contain exactly one '{{}}' and no other braces")
    return tuple(templates)


def templates_hash(templates: Sequence[str]) -> str:
    """Content hash of a template set (part of the text-embedding cache key)."""
    return hashlib.sha256("\n".join(check_templates(templates)).encode()).hexdigest()
