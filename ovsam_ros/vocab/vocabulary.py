"""Vocabularies: the class names recognition chooses from, each class a list of synonyms.

A class is written as one string ("mug, coffee cup", "aerosol_can/spray_can") and split into synonyms by
the rule the released OVSAM used when it embedded its class names: ``_or_``, ``/`` and ``,`` separate
synonyms and ``_`` is a space. The first synonym is the display name. The content hash identifies a
vocabulary's text (not its name), so the text-embedding cache and the ROS outputs can tell vocabularies
apart without comparing thousands of strings.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

PRESETS = ("coco", "lvis", "lvis_synonyms", "imagenet21k")
"""Shipped vocabularies. ``lvis`` holds LVIS's category names, the strings the released OVSAM embedded
(so its text embeddings are the checkpoint's own); ``lvis_synonyms`` the same classes with every LVIS
synonym, for naming beyond the checkpoint's exact classifier."""
ALL = "all"
MERGED = ("coco", "lvis", "imagenet21k")
"""What ``all`` merges (``lvis_synonyms`` would only repeat ``lvis``)."""


class VocabularyError(ValueError):
    """A vocabulary that cannot be read or is empty; the message says which and why."""


def split_synonyms(text: str) -> list[str]:
    """Synonyms of one class string, split the way the released OVSAM split its class names."""
    text = text.replace("_or_", ",").replace("/", ",").replace("_", " ")
    return [s for s in (" ".join(part.split()) for part in text.split(",")) if s]


def normalise_name(name: str) -> str:
    """Case- and spacing-insensitive key for comparing names across vocabularies."""
    return " ".join(name.replace("_", " ").lower().split())


@dataclass(frozen=True)
class Vocabulary:
    """``classes[i]`` is the synonym list of class ``i``; its first synonym is the display name."""

    name: str
    classes: tuple[tuple[str, ...], ...] = field(repr=False)
    content_hash: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise VocabularyError(f"vocabulary {self.name!r} has no classes")
        for i, synonyms in enumerate(self.classes):
            if not synonyms or not all(isinstance(s, str) and s.strip() for s in synonyms):
                raise VocabularyError(f"vocabulary {self.name!r}: class {i} has an empty name: {synonyms!r}")
        content = "\n".join("\t".join(synonyms) for synonyms in self.classes)
        object.__setattr__(self, "content_hash", hashlib.sha256(content.encode()).hexdigest())

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def display_names(self) -> list[str]:
        return [synonyms[0] for synonyms in self.classes]

    @property
    def max_synonyms(self) -> int:
        """P of the ``[C, P, D]`` text embeddings."""
        return max(len(synonyms) for synonyms in self.classes)

    @property
    def label(self) -> str:
        """Name plus short content hash, as published with results ("lvis@1a2b3c4d5e6f")."""
        return f"{self.name}@{self.content_hash[:12]}"

    @staticmethod
    def from_names(names: Iterable[str | Sequence[str]], name: str = "custom") -> Vocabulary:
        """One class per entry: a class string (split into synonyms) or an explicit synonym list."""
        classes = []
        for entry in names:
            if isinstance(entry, str):
                synonyms = split_synonyms(entry)
            elif isinstance(entry, Sequence):
                synonyms = [s for s in (" ".join(str(x).split()) for x in entry) if s]
            else:
                raise VocabularyError(f"vocabulary {name!r}: want a name or a synonym list, got {entry!r}")
            if not synonyms:
                raise VocabularyError(f"vocabulary {name!r}: empty class name {entry!r}")
            classes.append(tuple(synonyms))
        return Vocabulary(name, tuple(classes))

    @staticmethod
    def from_file(path: str | Path, name: str | None = None) -> Vocabulary:
        """``.txt``: one class per line, synonyms separated by commas, ``#`` starts a comment line.
        ``.yaml``/``.yml``: a list, or a ``names:`` list or ``{index: name}`` mapping (ultralytics)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"cannot read vocabulary file {path}: {exc}") from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            entries = _yaml_entries(text, path)
        else:
            entries = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not entries:
            raise VocabularyError(f"vocabulary file {path} lists no classes")
        return Vocabulary.from_names(entries, name=name or path.stem)

    @staticmethod
    def from_name(name: str) -> Vocabulary:
        """A shipped vocabulary: "coco" (80), "lvis" / "lvis_synonyms" (1203), "imagenet21k" (21,843) or
        "all" (merged)."""
        if name == ALL:
            return _all()
        if name not in PRESETS:
            raise VocabularyError(f"unknown vocabulary {name!r}; choose one of {[*PRESETS, ALL]}")
        return _preset(name)

    @staticmethod
    def merged(vocabularies: Sequence[Vocabulary], name: str) -> Vocabulary:
        """Classes of all vocabularies in order, dropping every class whose display name (case- and
        space-insensitive) was already taken."""
        seen: set[str] = set()
        classes = []
        for vocab in vocabularies:
            for synonyms in vocab.classes:
                key = normalise_name(synonyms[0])
                if key not in seen:
                    seen.add(key)
                    classes.append(synonyms)
        return Vocabulary(name, tuple(classes))


def _yaml_entries(text: str, path: Path) -> list[str | list[str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise VocabularyError(f"vocabulary file {path} is not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("names")
    if isinstance(data, dict):
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except (TypeError, ValueError) as exc:
            raise VocabularyError(f"{path}: 'names' mapping keys must be class indices") from exc
    if not isinstance(data, list):
        raise VocabularyError(f"{path}: expected a list of class names or a 'names:' list/mapping")
    entries: list[str | list[str]] = []
    for entry in data:
        if isinstance(entry, (str, int, float)):
            entries.append(str(entry))
        elif isinstance(entry, list) and all(isinstance(s, str) for s in entry):
            entries.append(entry)
        else:
            raise VocabularyError(f"{path}: a class must be a name or a list of synonyms, got {entry!r}")
    return entries


def data_file(filename: str) -> Path:
    """A file shipped in ``ovsam_ros/vocab/data``."""
    return Path(str(resources.files("ovsam_ros.vocab") / "data" / filename))


@functools.cache
def _preset(name: str) -> Vocabulary:
    return Vocabulary.from_file(data_file(f"{name}.txt"), name=name)


@functools.lru_cache(maxsize=1)
def _all() -> Vocabulary:
    return Vocabulary.merged([_preset(n) for n in MERGED], name=ALL)



def names_file(names: Sequence[str], directory: Path | None = None) -> Path:
    """Explicit class names (synonyms after commas) as a vocabulary file named by its content, so a
    list given at run time (``~/set_vocabulary``) can stand as the ``vocab.vocabulary`` parameter."""
    from ovsam_ros.assets import cache_dir

    vocabulary = Vocabulary.from_names(names, name="custom")
    folder = cache_dir() / "vocabularies" if directory is None else directory
    path = folder / f"names-{vocabulary.content_hash[:12]}.txt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        lines = "".join(", ".join(synonyms) + "\n" for synonyms in vocabulary.classes)
        path.write_text(lines, encoding="utf-8")
    return path
