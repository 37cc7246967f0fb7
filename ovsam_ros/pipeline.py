"""From settings to a ready prompt processor: device, model, vocabulary with cached text embeddings.

The CLI, the bag replay, the evaluator and the ROS node all start the same way, and all answer prompts
the same way; this module is that one way. Five lines from an image to named masks::

    from ovsam_ros.config import ModelConfig, VocabConfig
    from ovsam_ros.pipeline import build_processor
    from ovsam_ros.prompts import Prompt
    ovsam = build_processor(ModelConfig(preset="ovsam-lvis"), VocabConfig(vocabulary="lvis"))
    for inst in ovsam.segment(rgb, [Prompt.point([(320, 240)]), Prompt.from_box([10, 20, 200, 220])]):
        print(inst.label, inst.score, inst.bbox)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovsam_ros.config import EverythingConfig, ModelConfig, VocabConfig
from ovsam_ros.engine import PredictorProcessor
from ovsam_ros.model.base import ImageFeatures, Segmenter
from ovsam_ros.predictor import DTYPES, Predictor
from ovsam_ros.preset_registry import PRESETS as MODEL_PRESETS
from ovsam_ros.prompts import Prompt, PromptKind
from ovsam_ros.recognition import Naming, name_instances
from ovsam_ros.results import Instance
from ovsam_ros.vocab.base_classes import base_mask_for
from ovsam_ros.vocab.embedding_files import import_class_embeddings, released_file_for
from ovsam_ros.vocab.text_embeddings import EmbeddingCache
from ovsam_ros.vocab.vocabulary import ALL, PRESETS, Vocabulary


class PipelineError(ValueError):
    """Settings that do not fit together (e.g. naming with a model that only segments)."""


def resolve_device(device: str = "auto", precision: str = "auto") -> tuple[str, torch.dtype]:
    """``auto`` device -> CUDA when available, else CPU; ``auto`` precision -> fp16 on CUDA, else fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    if precision not in DTYPES:
        raise PipelineError(f"precision must be auto, {', '.join(DTYPES)}; got {precision!r}")
    return device, DTYPES[precision]


def load_vocabulary(spec: str | Vocabulary) -> Vocabulary:
    """A shipped vocabulary by name (coco, lvis, imagenet21k, all), else a .txt/.yaml file of names."""
    if isinstance(spec, Vocabulary):
        return spec
    return Vocabulary.from_name(spec) if spec in (*PRESETS, ALL) else Vocabulary.from_file(spec)


def checkpoint_classes(preset: str) -> str | None:
    """The training-class list of an OVSAM preset ("lvis" / "coco"): its base classes; else None."""
    return MODEL_PRESETS[preset].classes if preset in MODEL_PRESETS else None


def model_from_config(config: ModelConfig, device: str | torch.device, dtype: torch.dtype) -> Segmenter:
    """The configured preset (weights resolved by the presets) on ``device`` in ``dtype``."""
    from ovsam_ros.model.presets import build_model

    return build_model(config.preset, weights_dir=Path(config.weights_dir).expanduser() if config.weights_dir
                       else None, random_init=config.random_init, device=device, dtype=dtype,
                       recognition=config.recognition, clip_model=config.clip_model or None,
                       sam_variant=config.sam_variant,
                       clip_weights=Path(config.clip_weights).expanduser() if config.clip_weights else None)


def build_predictor(config: ModelConfig | None = None) -> Predictor:
    """The configured preset on its device and precision."""
    config = ModelConfig() if config is None else config
    device, dtype = resolve_device(config.device, config.precision)
    return Predictor(model_from_config(config, device, dtype), device=device, dtype=dtype)


def embed_vocabulary(predictor: Predictor, vocabulary: Vocabulary,
                     progress: bool | Callable[[int, int], None] = True) -> torch.Tensor:
    """``[C, P, D]`` text embeddings of ``vocabulary`` by the model's own text tower, from the on-disk
    cache (built once per text tower, vocabulary and template set)."""
    text = predictor.model.text_tower
    if predictor.model.recognizer is None or text is None:
        raise PipelineError(f"the {type(predictor.model).__name__} model has no recognizer with a CLIP text "
                            "tower: it only segments (configure a CLIP model for mobilesam / sam-clip)")
    return EmbeddingCache().get_or_build(vocabulary, text.model, text.tokenizer, predictor.device,
                                         progress=progress)


def vocabulary_embeddings(predictor: Predictor, vocabulary: Vocabulary,
                          progress: bool | Callable[[int, int], None] = True, *, embeddings_file: str = "",
                          preset: str = "", weights_dir: str = "") -> torch.Tensor:
    """``[C, P, D]`` embeddings naming ``vocabulary``: from ``embeddings_file`` (a released
    class-embedding file, :mod:`ovsam_ros.vocab.embedding_files`) when given; for an ``ovsam-*``
    preset naming the shipped lvis or coco vocabulary, from the released file in the weights folder
    when it is there (naming then matches the release, with no text-tower pass); else from the
    model's text tower (:func:`embed_vocabulary`)."""
    from ovsam_ros.weights import weights_dir as resolve_weights_dir

    recognizer = predictor.model.recognizer
    path: Path | None = Path(embeddings_file).expanduser() if embeddings_file else None
    if path is None and preset.startswith("ovsam-"):
        path = released_file_for(vocabulary, resolve_weights_dir(weights_dir or None))
    if path is None or recognizer is None:
        return embed_vocabulary(predictor, vocabulary, progress)
    embeddings, _ = import_class_embeddings(path, vocabulary, recognizer.embed_dim, device=predictor.device)
    return embeddings


QUERY_CACHE_ENTRIES = 32
QUERY_CACHE_BYTES = 64 << 20
"""Bounds of the text-query cache: resolved query sets hold only their phrases' embeddings (a few
KB each), so these bound a stream of ever-new queries, not the vocabulary."""


class QueryCache:
    """Least-recently-used query sets by query text, bounded in entries and in bytes."""

    def __init__(self, max_entries: int = QUERY_CACHE_ENTRIES, max_bytes: int = QUERY_CACHE_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._sets: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sets)

    @property
    def nbytes(self) -> int:
        return sum(q.nbytes for q in self._sets.values())

    def get_or_build(self, text: str, build: Callable[[], Any]) -> Any:
        if text in self._sets:
            self._sets.move_to_end(text)
            return self._sets[text]
        query_set = build()
        self._sets[text] = query_set
        while len(self._sets) > 1 and (len(self._sets) > self.max_entries or self.nbytes > self.max_bytes):
            self._sets.popitem(last=False)
        return query_set

    def clear(self) -> None:
        self._sets.clear()


class PromptProcessor:
    """Answers all four prompt kinds on a frame's cached features; the engine's
    :class:`~ovsam_ros.engine.FrameProcessor`.

    Points and boxes go through :class:`~ovsam_ros.engine.PredictorProcessor` (the predictor's batched
    ``predict_prompts``); text and everything through :mod:`ovsam_ros.queries` and
    :mod:`ovsam_ros.everything`, which share one set of everything-mode candidate masks per frame.
    Instances come back in prompt order. Not thread-safe: one thread (the engine's worker) runs it,
    vocabulary changes included.
    """

    def __init__(self, predictor: Predictor, everything: EverythingConfig | None = None,
                 vocab_config: VocabConfig | None = None) -> None:
        self.predictor = predictor
        self.everything = EverythingConfig() if everything is None else everything
        self.vocab_config = VocabConfig() if vocab_config is None else vocab_config
        self.vocabulary: Vocabulary | None = None
        self._direct = PredictorProcessor(predictor, namer=self._name)
        self._embeddings: torch.Tensor | None = None
        self._base_mask: torch.Tensor | None = None
        self._embed: Callable | None = None
        self._query_sets = QueryCache()
        # the vocabulary + phrases of the query used last, kept between frames: at 21,843 classes it is
        # a ~1 GB tensor, and a standing query uses the same one on every frame
        self._extended: tuple[str, Any] | None = None

    @property
    def can_name(self) -> bool:
        return self.vocabulary is not None

    @property
    def cached_queries(self) -> int:
        """Resolved text queries kept (bounded: :class:`QueryCache`)."""
        return len(self._query_sets)

    def set_vocabulary(self, vocabulary: Vocabulary, embeddings: torch.Tensor,
                       base_mask: torch.Tensor | None = None, embed_phrases: Callable | None = None) -> None:
        """Name with ``vocabulary`` (``[C, P, D]`` text ``embeddings``); ``embed_phrases`` embeds text
        queries that are not classes of it (:func:`ovsam_ros.queries.phrase_embedder`)."""
        # on the device once: text query sets are built from these and swapped in on every frame
        embeddings = torch.as_tensor(embeddings).to(self.predictor.device)
        self.predictor.set_vocabulary(vocabulary.display_names, embeddings, base_mask)
        self.vocabulary, self._embeddings, self._base_mask = vocabulary, embeddings, base_mask
        self._embed = embed_phrases
        self._query_sets.clear()
        self._extended = None

    def prepare_vocabulary(self, vocabulary: Vocabulary | str, preset: str = "",
                           progress: bool | Callable[[int, int], None] = True, *, embeddings_file: str = "",
                           weights_dir: str = "") -> Callable[[], None]:
        """The slow half of a vocabulary change, safe off the worker: load ``vocabulary`` (a name, a file
        or a :class:`Vocabulary`), build or read its cached embeddings (:func:`vocabulary_embeddings`)
        and the checkpoint's base classes for an OVSAM ``preset``. Returns the fast half, which switches
        to it; run that where the model runs (the engine's worker), so a frame is named wholly by one
        vocabulary."""
        from ovsam_ros.queries import phrase_embedder

        vocabulary = load_vocabulary(vocabulary)
        embeddings = vocabulary_embeddings(self.predictor, vocabulary, progress,
                                           embeddings_file=embeddings_file, preset=preset,
                                           weights_dir=weights_dir)
        checkpoint = checkpoint_classes(preset)
        base = None if checkpoint is None else torch.as_tensor(base_mask_for(vocabulary, checkpoint))
        text = self.predictor.model.text_tower
        embed = phrase_embedder(text.model, text.tokenizer, self.predictor.device)
        return lambda: self.set_vocabulary(vocabulary, embeddings, base, embed)

    def use_vocabulary(self, vocabulary: Vocabulary | str, preset: str = "", progress: bool = True, *,
                       embeddings_file: str = "", weights_dir: str = "") -> None:
        """Name with ``vocabulary`` now (:meth:`prepare_vocabulary`, then the switch)."""
        self.prepare_vocabulary(vocabulary, preset, progress, embeddings_file=embeddings_file,
                                weights_dir=weights_dir)()

    def encode(self, image: np.ndarray) -> ImageFeatures:
        return self.predictor.encode(image)

    def free_memory(self) -> None:
        """After an out-of-memory batch (the engine retries smaller): give cached CUDA blocks back."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Instance]:
        """One image, one-off prompts: encode it and answer them (the engine does this per frame)."""
        return self.answer(self.encode(image), prompts)

    def _name(self, probs: torch.Tensor) -> list[Naming] | None:
        """Top-k names and the "unknown" threshold for point and box prompts, as for everything mode."""
        if self.vocabulary is None:
            return None
        config = self.vocab_config
        return name_instances(probs, self.vocabulary, config.top_k, config.score_threshold)

    def answer(self, features: ImageFeatures, prompts: list[Prompt]) -> list[Instance]:
        from ovsam_ros.everything import candidates_to_instances, generate_candidates, recognize_candidates
        from ovsam_ros.queries import find_text_instances

        direct = [p for p in prompts if p.kind in (PromptKind.POINT, PromptKind.BOX)]
        answered = iter(self._direct.answer(features, direct) if direct else [])
        candidates = None
        out: list[Instance] = []
        for prompt in prompts:
            if prompt.kind in (PromptKind.POINT, PromptKind.BOX):
                out.append(next(answered))
                continue
            query_set = self._query_set(prompt.text) if prompt.kind == PromptKind.TEXT else None
            if candidates is None:
                candidates = generate_candidates(self.predictor, features, self.everything)
            if query_set is not None:
                extended = self._extended_for(prompt.text, query_set)
                out += find_text_instances(self.predictor, features, query_set, self._embeddings,
                                           self._base_mask, extended=extended, candidates=candidates,
                                           vocab_config=self.vocab_config)
            else:
                recognized = recognize_candidates(self.predictor, features, candidates, self.vocabulary,
                                                  self.vocab_config)
                out += candidates_to_instances(candidates, *(recognized or (None, None)),
                                               PromptKind.EVERYTHING, prompt.id)
        return out

    def _query_set(self, text: str) -> Any:
        from ovsam_ros.queries import QueryError, build_query_set

        if self.vocabulary is None or self._embed is None:
            raise QueryError(f"text query {text!r} needs a recognizer with a vocabulary; this model only "
                             "segments (use an OVSAM preset, or a CLIP model for mobilesam / sam-clip)")
        vocabulary, embeddings, embed = self.vocabulary, self._embeddings, self._embed
        return self._query_sets.get_or_build(
            text, lambda: build_query_set(text, vocabulary, embeddings, embed))

    def _extended_for(self, text: str, query_set: Any) -> Any:
        if self._extended is None or self._extended[0] != text:
            self._extended = (text, query_set.extended(self._embeddings, self._base_mask))
        return self._extended[1]


def require_names(processor: PromptProcessor, preset: str) -> None:
    """Text queries are answered by naming masks: refuse a model that only segments, with the way out
    (one message for the CLI and the fleet's workers)."""
    if processor.vocabulary is None:
        raise PipelineError(f"text queries need a recognizer, and the {preset} model only segments (use an "
                            "OVSAM preset, or --clip-model with mobilesam / sam-clip)")


def build_processor(model: ModelConfig | None = None, vocab: VocabConfig | None = None,
                    everything: EverythingConfig | None = None, progress: bool = True) -> PromptProcessor:
    """The configured model with its vocabulary set where the model can name masks. An unreadable
    vocabulary file fails before the (slow) model load."""
    model = ModelConfig() if model is None else model
    vocab = VocabConfig() if vocab is None else vocab
    vocabulary = load_vocabulary(vocab.vocabulary)
    processor = PromptProcessor(build_predictor(model), everything, vocab)
    if processor.predictor.model.recognizer is not None:
        processor.use_vocabulary(vocabulary, model.preset, progress, embeddings_file=vocab.embeddings_file,
                                 weights_dir=model.weights_dir)
    return processor
