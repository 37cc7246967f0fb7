"""Regenerate the vocabulary data files in ``ovsam_ros/vocab/data/`` (one-off; the files are committed).

Sources, read without installing or importing anything that would become a dependency:

* COCO-80 and LVIS-1203 synonym lists (``lvis_synonyms.txt``): ``ultralytics/cfg/datasets/{coco,lvis}.yaml``
  read out of the ultralytics wheel (``pip download --no-deps ultralytics``; pass ``--ultralytics-wheel``
  to reuse a file). LVIS lines keep ultralytics' ``/``-separated synonym lists verbatim.
* ImageNet-21k: the 21,843 synsets of ``timm/data/_info/imagenet21k_goog_synsets.txt`` in that order (the
  label order of Google's in21k heads), each with its lemma list from ``imagenet_synset_to_lemma.txt``
  (that file has 21,844 lines; the extra synset is not part of ImageNet-21k).
* COCO base/novel: the OV-COCO 48/17 split (Bansal et al. 2018), as indices into the COCO-80 list.
* LVIS (``lvis.txt``) and LVIS base: the ``name`` fields of the ``categories`` of any LVIS v1 annotation
  file (``--lvis-categories``; skipped when not given), i.e. the class strings the released OVSAM
  embedded ([1203, 2, 768] after splitting on ``_or_``), and the frequent + common ones (866).

Usage: ``python scripts/make_vocab_data.py [--ultralytics-wheel W] [--lvis-categories lvis_v1_val.json]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).resolve().parent.parent / "ovsam_ros" / "vocab" / "data"

# OV-COCO split (48 base / 17 novel), indices into the 80 COCO classes in their usual order.
COCO_BASE_IDS = [
    0, 1, 2, 3, 6, 7, 8, 13, 14, 17, 18, 21, 22, 23, 24, 26, 28, 29, 30, 33, 37, 39, 42, 44, 45, 46, 47, 48,
    49, 50, 51, 53, 54, 56, 59, 61, 62, 63, 64, 65, 68, 69, 70, 72, 73, 74, 75, 79,
]
COCO_NOVEL_IDS = [4, 5, 15, 16, 19, 20, 25, 27, 31, 36, 41, 43, 55, 57, 66, 71, 76]

HEADERS = {
    "coco.txt": "COCO 2017, 80 classes (names from ultralytics cfg/datasets/coco.yaml)",
    "lvis.txt": "LVIS v1, 1203 category names, the class strings the released OVSAM embedded",
    "lvis_synonyms.txt": "LVIS v1, 1203 classes with all synonyms, '/'-separated (ultralytics lvis.yaml)",
    "imagenet21k.txt": "ImageNet-21k, 21843 WordNet synsets in Google in21k label order; lemmas from timm",
    "coco_base.txt": "OV-COCO 48/17 split: the 48 base (training) classes",
    "coco_novel.txt": "OV-COCO 48/17 split: the 17 novel classes",
    "lvis_base.txt": "LVIS v1 frequent + common category names (866): the LVIS checkpoint's training classes",
}


def _ultralytics_names(wheel: Path, member: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = yaml.safe_load(zf.read(f"ultralytics/cfg/datasets/{member}"))["names"]
    return [names[i] for i in range(len(names))]


def _download_ultralytics(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "--quiet", "-d", str(dest), "ultralytics"], check=True)
    return next(dest.glob("ultralytics-*.whl"))


def _imagenet21k() -> list[str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise SystemExit("timm is not installed; it carries the ImageNet-21k synset lists")
    info = Path(spec.origin).parent / "data" / "_info"
    lemmas = dict(line.rstrip("\n").split("\t", 1)
                  for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    synsets = (info / "imagenet21k_goog_synsets.txt").read_text().split()
    if len(synsets) != 21843:
        raise SystemExit(f"expected 21843 ImageNet-21k synsets, found {len(synsets)}")
    return [lemmas[s] for s in synsets]


def _lvis_categories(categories_file: Path, lvis: list[str]) -> list[dict]:
    """LVIS v1 categories by id; their order is checked against ultralytics' synonym list."""
    data = json.loads(categories_file.read_text())
    cats = sorted(data["categories"] if isinstance(data, dict) else data, key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(lvis) + 1)):
        raise SystemExit(f"{categories_file}: expected LVIS ids 1..{len(lvis)}")
    mismatched = [c["name"] for c, line in zip(cats, lvis, strict=True)
                  if c["name"].split("_(")[0].replace("_", " ").lower()
                  not in [s.strip().lower() for s in line.split("/")]]
    if len(mismatched) > 5:  # ultralytics renamed two ("bull", "doughnut"); more means a different order
        raise SystemExit(f"LVIS names do not line up with ultralytics' list: {mismatched[:10]}")
    frequent_common = sum(c["frequency"] in ("f", "c") for c in cats)
    if frequent_common != 866:
        raise SystemExit(f"expected 866 frequent + common LVIS classes, found {frequent_common}")
    return cats


def _write(name: str, lines: list[str], out: Path) -> None:
    bad = [line for line in lines if "\n" in line or not line.strip() or line.lstrip().startswith("#")]
    if bad:
        raise SystemExit(f"{name}: lines the loader cannot read back: {bad[:5]}")
    (out / name).write_text(f"# {HEADERS[name]}\n" + "\n".join(lines) + "\n")
    print(f"{out / name}: {len(lines)} classes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ultralytics-wheel", type=Path, help="an ultralytics wheel already downloaded")
    parser.add_argument("--lvis-categories", type=Path, help="LVIS v1 JSON with categories[].frequency")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.ultralytics_wheel or _download_ultralytics(Path(tmp))
        coco = _ultralytics_names(wheel, "coco.yaml")
        lvis = _ultralytics_names(wheel, "lvis.yaml")
    if len(coco) != 80 or len(lvis) != 1203:
        raise SystemExit(f"expected 80 COCO and 1203 LVIS names, found {len(coco)} and {len(lvis)}")
    _write("coco.txt", coco, args.out)
    _write("imagenet21k.txt", _imagenet21k(), args.out)
    _write("coco_base.txt", [coco[i] for i in COCO_BASE_IDS], args.out)
    _write("coco_novel.txt", [coco[i] for i in COCO_NOVEL_IDS], args.out)
    _write("lvis_synonyms.txt", lvis, args.out)
    if args.lvis_categories:  # the class strings the released OVSAM embedded, and its training classes
        cats = _lvis_categories(args.lvis_categories, lvis)
        _write("lvis.txt", [c["name"] for c in cats], args.out)
        _write("lvis_base.txt", [c["name"] for c in cats if c["frequency"] in ("f", "c")], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
