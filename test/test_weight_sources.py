"""Weight sources against loopback servers only: a fake Hugging Face hub (paths-info metadata and the
resolve route) and a file server with and without Range support serving a SAM-ViT-H-layout ``.pth``
from which only the prompt encoder is taken."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import PromptEncoder

from ovsam_ros import assets, weights
from ovsam_ros.model.checkpoints import CheckpointError, read_state_dict, read_zip_prefix
from ovsam_ros.model.ovsam import load_prompt_encoder
from ovsam_ros.weights import FILES, WeightFile, WeightsError, fetch_file

sys.path.insert(0, str(Path(__file__).parent))
from official_weights import random_official_state_dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) by GET/HEAD, with Range unless ``server.ranges`` is off,
    and the hub's paths-info route from ``server.lfs`` (filename -> (sha256, size))."""

    def _send_file(self, head: bool) -> None:
        server = self.server
        body = server.files.get(self.path.split("?")[0])
        wanted = self.headers.get("Range")
        server.log.append((self.command, self.path, wanted))
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(body) - 1
        match = _RANGE.match(wanted or "") if server.ranges else None
        if match and match.group(1):
            start, end = int(match.group(1)), min(int(match.group(2) or end), end)
        elif match and match.group(2):
            start = max(0, len(body) - int(match.group(2)))
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        if head:
            return
        for offset in range(start, end + 1, 1 << 16):
            chunk = body[offset:min(offset + (1 << 16), end + 1)]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (no-range probe)
                return
            server.sent += len(chunk)

    def do_GET(self) -> None:
        self._send_file(head=False)

    def do_HEAD(self) -> None:
        self._send_file(head=True)

    def do_POST(self) -> None:
        """``/api/models/{repo}/paths-info/{revision}``, as ``HfApi.get_paths_info`` asks it."""
        length = int(self.headers.get("Content-Length", 0))
        form = self.rfile.read(length).decode()
        self.server.log.append(("POST", self.path, form))
        name = form.split("paths=")[1].split("&")[0]
        sha, size = self.server.lfs[name]
        body = json.dumps([{"type": "file", "path": name, "size": size, "oid": "f" * 40,
                            "lfs": {"oid": sha, "size": size, "pointerSize": 134}}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.lfs, httpd.log, httpd.ranges, httpd.sent = {}, {}, [], True, 0
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _base(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# --- Hugging Face: the hub's LFS sha256 at the pinned revision --------------------------------------

def _hub(server, monkeypatch, name: str, served: bytes, lfs_body: bytes | None = None) -> WeightFile:
    """Serve ``served`` as ``name`` on a fake hub whose metadata describes ``lfs_body`` (default: the
    same bytes); ``HF_ENDPOINT`` points huggingface_hub at it."""
    described = served if lfs_body is None else lfs_body
    server.files[f"/{weights.HF_REPO}/resolve/{weights.HF_REVISION}/{name}"] = served
    server.lfs[name] = (hashlib.sha256(described).hexdigest(), len(described))
    monkeypatch.setenv(weights.HF_ENDPOINT_ENV, _base(server))
    return replace(FILES["sam2clip"], filename=name)


def test_hub_file_is_checked_against_the_hub_lfs_sha256_and_stamped(server, monkeypatch, tmp_path, capfd):
    body = bytes(range(256)) * 300
    entry = _hub(server, monkeypatch, "sam2clip_vith_rn50x16.pth", body)
    path = fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=True)
    assert path == tmp_path / entry.filename and path.read_bytes() == body
    assert any(r[0] == "POST" and r[1].endswith(f"/paths-info/{weights.HF_REVISION}") for r in server.log)
    assert "100%" in capfd.readouterr().err  # the progress bar on the hub path
    stamp = json.loads((tmp_path / weights.STAMP_NAME).read_text())[entry.filename]
    assert stamp["sha256"] == hashlib.sha256(body).hexdigest() and stamp["size"] == len(body)
    assert weights.HF_REPO in stamp["source"] and weights.HF_REVISION in stamp["source"]
    seen = len(server.log)
    assert fetch_file(entry, tmp_path, "ovsam-lvis", offline=True) == path  # stamp: no network, no hash
    assert len(server.log) == seen
    fetch_file(entry, tmp_path / "again", "ovsam-lvis", offline=False, progress=False)
    assert "100%" not in capfd.readouterr().err  # progress=False is honoured there too


def test_corrupted_hub_file_is_refused_with_one_line(server, monkeypatch, tmp_path):
    good = b"weights" * 1000
    bad = bytearray(good)
    bad[100] ^= 0xFF
    entry = _hub(server, monkeypatch, "clip2sam_lvis_rn50x16.pth", bytes(bad), lfs_body=good)
    with pytest.raises(WeightsError) as info:
        fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert hashlib.sha256(good).hexdigest() in message and hashlib.sha256(bad).hexdigest() in message
    assert entry.filename in message and "ovsam-ros weights fetch ovsam-lvis" in message
    assert not (tmp_path / entry.filename).exists()


def test_hand_placed_hub_file_is_checked_against_the_hub_once(server, monkeypatch, tmp_path):
    body = b"placed by hand" * 100
    entry = _hub(server, monkeypatch, "clip2sam_coco_rn50x16.pth", body)
    (tmp_path / entry.filename).write_bytes(body)
    assert fetch_file(entry, tmp_path, "ovsam-coco", offline=False) == tmp_path / entry.filename
    assert [r[0] for r in server.log if "resolve" in r[1]] == [] and server.log[-1][0] == "POST"
    (tmp_path / entry.filename).write_bytes(body[:-1] + b"X")  # same size, new mtime
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_file(entry, tmp_path, "ovsam-coco", offline=True)


# --- SAM ViT-H: only the prompt encoder, by range requests ------------------------------------------

@pytest.fixture(scope="module")
def sam_file(tmp_path_factory) -> Path:
    """A ``.pth`` in SAM ViT-H's layout: the real prompt-encoder keys plus two ViT-H-sized image-encoder
    tensors (39 MB) standing for the 2.5 GB the prompt encoder does not need."""
    state = random_official_state_dict("sam")
    gen = torch.Generator().manual_seed(3)
    for block in range(2):
        state[f"image_encoder.blocks.{block}.attn.qkv.weight"] = torch.randn(3840, 1280, generator=gen)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256, generator=gen)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_h_4b8939.pth"
    torch.save(state, str(path))
    return path


def _sam_entry(server, sam_file: Path) -> WeightFile:
    data = sam_file.read_bytes()
    server.files["/sam_vit_h_4b8939.pth"] = data
    source = replace(FILES["sam_vit_h"], url=_base(server) + "/sam_vit_h_4b8939.pth",
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return replace(FILES["sam_vit_h_prompt_encoder"], source=source)


def _assert_same_prompt_encoder(small: Path, full: Path) -> None:
    reference = {k: v for k, v in torch.load(str(full), weights_only=True).items()
                 if k.startswith("prompt_encoder.")}
    extracted = read_state_dict(small)
    assert set(extracted) == set(reference) and len(reference) == 17
    for key, tensor in reference.items():
        assert extracted[key].dtype == tensor.dtype and torch.equal(extracted[key], tensor), key
    encoders = []
    for path in (small, full):
        encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                input_image_size=(1024, 1024), mask_in_chans=16)
        load_prompt_encoder(encoder, path)  # the OVSAM builder's own loading step
        encoders.append(encoder.state_dict())
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[1])


def test_prompt_encoder_is_read_by_range_requests(server, sam_file, tmp_path, capfd):
    entry = _sam_entry(server, sam_file)
    total = sam_file.stat().st_size
    path = fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=True)
    assert path == tmp_path / "sam_vit_h_4b8939.prompt_encoder.safetensors"
    assert "(ranges)" in capfd.readouterr().err  # the progress bar on the range path
    assert all(r[2] is not None for r in server.log if r[0] == "GET")  # every GET was a range request
    print(f"\nrange path: {server.sent:,} bytes transferred of a {total:,}-byte file "
          f"({len(server.log)} requests); extracted file {path.stat().st_size:,} bytes")
    assert server.sent < total / 100
    assert not (tmp_path / "sam_vit_h_4b8939.pth").exists()
    _assert_same_prompt_encoder(path, sam_file)
    stamp = json.loads((tmp_path / weights.STAMP_NAME).read_text())[path.name]
    assert stamp["sha256"] == assets.sha256_file(path) and "range requests" in stamp["source"]
    seen = len(server.log)
    assert fetch_file(entry, tmp_path, "ovsam-lvis", offline=True) == path
    assert len(server.log) == seen
    path.write_bytes(path.read_bytes() + b" ")  # tampered: size changed, so it is hashed and refused
    with pytest.raises(WeightsError, match=r"sha256 mismatch, expected .*, got .*ovsam-ros weights fetch"):
        fetch_file(entry, tmp_path, "ovsam-lvis", offline=True)


def test_server_without_range_support_falls_back_to_the_full_download(server, sam_file, tmp_path):
    server.ranges = False
    entry = _sam_entry(server, sam_file)
    total = sam_file.stat().st_size
    path = fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=False)
    print(f"\nno-range fallback: {server.sent:,} bytes transferred of a {total:,}-byte file "
          f"({len(server.log)} requests)")
    assert server.sent >= total
    assert not (tmp_path / "sam_vit_h_4b8939.pth").exists()  # only the small file is kept
    assert not list(tmp_path.glob("*.part"))
    _assert_same_prompt_encoder(path, sam_file)


def test_corrupted_full_download_is_refused(server, sam_file, tmp_path):
    server.ranges = False
    entry = _sam_entry(server, sam_file)
    entry = replace(entry, source=replace(entry.source, sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"sha256 mismatch, expected 0{64}, got [0-9a-f]{64}"):
        fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=False)
    assert not list(tmp_path.glob("sam_vit_h_4b8939*"))


def test_remote_file_of_another_size_is_refused(server, sam_file, tmp_path):
    entry = _sam_entry(server, sam_file)
    entry = replace(entry, source=replace(entry.source, size=2_564_550_879))
    with pytest.raises(WeightsError, match="expected 2564550879; not the registry's file"):
        fetch_file(entry, tmp_path, "ovsam-lvis", offline=False, progress=False)
    assert not (tmp_path / entry.filename).exists()


def test_a_local_full_sam_file_is_used_without_network(sam_file, tmp_path):
    (tmp_path / sam_file.name).write_bytes(sam_file.read_bytes())
    entry = replace(FILES["sam_vit_h_prompt_encoder"], source=replace(
        FILES["sam_vit_h"], sha256=assets.sha256_file(sam_file), size=sam_file.stat().st_size))
    path = fetch_file(entry, tmp_path, "ovsam-lvis", offline=True)
    _assert_same_prompt_encoder(path, sam_file)
    assert (tmp_path / sam_file.name).exists()  # someone else's file: kept


def test_ovsam_preset_resolves_the_small_prompt_encoder_file(sam_file, tmp_path, monkeypatch):
    small = FILES["sam_vit_h_prompt_encoder"]
    entry = replace(small, source=replace(FILES["sam_vit_h"], sha256=assets.sha256_file(sam_file),
                                          size=sam_file.stat().st_size))
    (tmp_path / sam_file.name).write_bytes(sam_file.read_bytes())
    fetch_file(entry, tmp_path, "ovsam-lvis", offline=True)
    (tmp_path / sam_file.name).unlink()
    for key in ("sam2clip", "clip2sam_lvis", "clip_rn50x16"):  # stand-ins with nothing to check them by
        monkeypatch.setitem(FILES, key, replace(FILES[key], sha256=None))
        (tmp_path / FILES[key].filename).write_bytes(b"stand-in")
    paths = weights.resolve("ovsam-lvis", tmp_path, offline=True)
    assert paths["sam"] == tmp_path / small.filename
    assert paths["sam"].stat().st_size < 100_000


# {"prompt_encoder.x": builtins.print("pickle code ran")} as protocol-0 opcodes, written out rather than
# pickled from ``print``: a library may have replaced builtins.print in this process (Ray does), and
# pickle would then name the replacement.
_RUNS_CODE = b"(dp0\nVprompt_encoder.x\np1\ncbuiltins\nprint\np2\n(Vpickle code ran\np3\ntp4\nRp5\ns."


def test_the_index_reader_refuses_any_global_but_tensors(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _RUNS_CODE)
    with zipfile.ZipFile(path) as archive, pytest.raises(
            CheckpointError, match=r"refusing global builtins\.print"):
        read_zip_prefix(archive, "prompt_encoder")
    assert "pickle code ran" not in capfd.readouterr().out
