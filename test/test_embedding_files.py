"""Released class-embedding files ([C, P, D], L2-normalised rows, as the official
``RN50x16_*Dataset.pth``) as vocabularies: checked, cached, and used instead of a text-tower pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.cli import main as cli_main
from ovsam_ros.config import ModelConfig, VocabConfig
from ovsam_ros.pipeline import build_processor
from ovsam_ros.prompts import Prompt
from ovsam_ros.vocab.base_classes import base_mask_for
from ovsam_ros.vocab.embedding_files import (
    RELEASED_FILES,
    EmbeddingFileError,
    import_class_embeddings,
    read_class_embeddings,
    released_file_for,
)
from ovsam_ros.vocab.vocabulary import Vocabulary


def _released(path, classes: int, synonyms: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A file in the released layout: one pickled float32 tensor [C, P, D] with unit rows."""
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(classes, synonyms, dim, generator=gen), dim=-1)
    torch.save(emb, path)
    return emb


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSAM_ROS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "text_embeddings"


def test_import_checks_caches_and_memory_maps(tmp_path, cache_root):
    vocab = Vocabulary.from_names(["mug", "toy robot, xiaoduxiong", "screwdriver"])
    path = tmp_path / "mine.pth"
    emb = _released(path, 3, 4, 32)
    got, npy = import_class_embeddings(path, vocab, 32)
    assert torch.equal(got, emb) and npy.parent == cache_root and npy.exists()
    assert got.shape == (3, 4, 32)  # the file's own P rows, not the vocabulary's synonym count
    assert str(path) in npy.with_suffix(".json").read_text()  # the cache records where it came from
    again, same = import_class_embeddings(path, vocab, 32)
    assert same == npy and torch.equal(again, emb) and len(list(cache_root.glob("*.npy"))) == 1
    np.save(tmp_path / "mine.npy", emb.numpy())
    assert torch.equal(read_class_embeddings(tmp_path / "mine.npy"), emb)


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    (b"\x00not a pickle", "cannot read class-embedding file"),
    ({"weights": torch.zeros(2)}, "holds a dict"),
    (torch.ones(3, 8), r"\[C, P, D\] float tensor"),
    (torch.full((3, 1, 8), float("nan")), "NaN"),
    (torch.ones(3, 1, 8), "L2-normalised"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(EmbeddingFileError, match=message):
        read_class_embeddings(path)


def test_a_file_must_fit_its_names_and_the_text_tower(tmp_path, cache_root):
    path = tmp_path / "coco.pth"
    _released(path, 80, 2, 768)
    with pytest.raises(EmbeddingFileError, match="80 classes but vocabulary lvis"):
        import_class_embeddings(path, Vocabulary.from_name("lvis"), 768)
    with pytest.raises(EmbeddingFileError, match="768-d embeddings but the model's text tower gives 1024-d"):
        import_class_embeddings(path, Vocabulary.from_name("coco"), 1024)


def test_released_files_are_found_for_the_shipped_vocabularies_only(tmp_path):
    coco = Vocabulary.from_name("coco")
    assert released_file_for(coco, tmp_path) is None
    (tmp_path / RELEASED_FILES["coco"]).write_bytes(b"")
    assert released_file_for(coco, tmp_path) == tmp_path / "RN50x16_CocoOVDataset.pth"
    edited = Vocabulary.from_names(coco.display_names[:-1], name="coco")
    assert released_file_for(edited, tmp_path) is None  # same name, other classes
    assert released_file_for(Vocabulary.from_name("imagenet21k"), tmp_path) is None


@pytest.mark.slow
def test_ovsam_names_with_the_released_file_in_the_weights_folder(tmp_path, cache_root, bear):
    """ovsam-coco (official-layout shapes, random weights) with RN50x16_CocoOVDataset.pth beside its
    weights: the vocabulary comes from the file, with no text-tower pass, and naming equals that of
    the file's tensor handed to the predictor directly."""
    import cv2

    weights = tmp_path / "weights"
    weights.mkdir()
    emb = _released(weights / RELEASED_FILES["coco"], 80, 3, 768, seed=3)
    config = ModelConfig(preset="ovsam-coco", random_init=True, device="cpu", weights_dir=str(weights))
    processor = build_processor(config, VocabConfig(vocabulary="coco", top_k=3), progress=False)
    assert processor.vocabulary.name == "coco"
    assert [p.name for p in cache_root.glob("*.json")] and all(
        "imported_from" in p.read_text() for p in cache_root.glob("*.json"))  # nothing built
    rgb = cv2.cvtColor(cv2.imread(str(bear.image_dir / "1.jpeg")), cv2.COLOR_BGR2RGB)
    predictor = processor.predictor
    features = predictor.encode(rgb)
    box = np.array([[227.0, 259.0, 444.0, 424.0]])
    from_file = predictor.predict_on(features, boxes=box, multimask_output=False).log_scores
    predictor.set_vocabulary(processor.vocabulary.display_names, emb,
                             torch.as_tensor(base_mask_for(processor.vocabulary, "coco")))
    direct = predictor.predict_on(features, boxes=box, multimask_output=False).log_scores
    assert from_file.shape == (1, 81) and torch.equal(from_file, direct)
    [inst] = processor.answer(features, [Prompt.from_box(box[0], id="b")])
    assert inst.label in processor.vocabulary.display_names


def test_cli_vocab_import(tmp_path, cache_root, capsys):
    names = tmp_path / "names.txt"
    names.write_text("mug\ntoy robot\n")
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    _released(good, 2, 2, 1024)
    _released(bad, 2, 2, 512)
    model = ["--model", "mobilesam", "--clip-model", "RN50", "--random-init", "--device", "cpu"]
    assert cli_main(["vocab", "import", str(good), "--names", str(names), *model]) == 0
    out = capsys.readouterr().out
    assert "2 classes, embeddings [2, 2, 1024]" in out and "--vocab-embeddings" in out
    assert len(list(cache_root.glob("*.npy"))) == 1
    assert cli_main(["vocab", "import", str(bad), "--names", str(names), *model]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovsam-ros vocab: error:") and "512-d" in err and len(err.splitlines()) == 1
    (tmp_path / "corrupt.pth").write_bytes(b"garbage")
    assert cli_main(["vocab", "import", str(tmp_path / "corrupt.pth"), "--names", str(names), *model]) == 1
    assert "cannot read class-embedding file" in capsys.readouterr().err
