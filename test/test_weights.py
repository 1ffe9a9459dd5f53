"""`fpseg weights`, the cache and name resolution, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fpseg_core import FPSeg, PromptBank, save_checkpoint, tiny_config
from fpseg_core.cityscapes_labels import BANK33
from fpseg_core.cli.common import load_model
from fpseg_core.cli.main import build_parser
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.modeling.build import build_fpseg
from fpseg_core.runtime.controller import load_pipeline
from fpseg_core.weights import (
    MANIFEST_NAME,
    REGISTRY,
    WeightsEntry,
    WeightsError,
    WeightsMismatchError,
    fetch,
    resolve_checkpoint,
    status,
    verify,
)

RANGE = re.compile(r"bytes=(\d+)-$")
SLOW_CHUNK = 4096


class FileServer(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) with Range support; records every request as (path, Range header).

    `cut_once`: paths whose next GET sends the full Content-Length but closes after half the body.
    `chunk_delay_s`: a pause after every SLOW_CHUNK bytes (to make concurrent fetches overlap)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.hits: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()
        self.chunk_delay_s = 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.server.hits.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        asked = self.headers.get("Range")
        if asked:
            start = int(RANGE.match(asked).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.server.cut_once:
            self.server.cut_once.discard(self.path)
            body = body[: len(body) // 2]  # then the connection closes: an interrupted transfer
        for offset in range(0, len(body), SLOW_CHUNK):
            self.wfile.write(body[offset:offset + SLOW_CHUNK])
            time.sleep(self.server.chunk_delay_s)


@pytest.fixture()
def server() -> Iterator[FileServer]:
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, as $FPSEG_HOME."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FPSEG_HOME", str(folder))
    return folder


def _serve(server: FileServer, name: str, data: bytes, published: bool = True) -> WeightsEntry:
    """A registry entry for `data`, served at /<name>.bin; its SHA-256 and size are recorded when `published`."""
    server.files[f"/{name}.bin"] = data
    digest = hashlib.sha256(data).hexdigest() if published else None
    return WeightsEntry(name, server.url(f"/{name}.bin"), f"{name}.bin", "mobilesam", "test file",
                        size=len(data) if published else None, sha256=digest)


def _random_bytes(size: int = 64 * 1024, seed: int = 0) -> bytes:
    return torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8).numpy().tobytes()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetch_downloads_verifies_and_records_the_file(server: FileServer, home: Path) -> None:
    data = _random_bytes()
    entry = _serve(server, "blob", data)
    fetched = fetch(entry)
    assert fetched.downloaded and fetched.path == home / "blob.bin" and fetched.path.read_bytes() == data
    assert fetched.record.published and fetched.record.sha256 == entry.sha256
    manifest = json.loads((home / MANIFEST_NAME).read_text())
    assert manifest["files"]["blob.bin"]["sha256"] == entry.sha256
    assert not (home / "blob.bin.part").exists()
    assert status(entry).state == "verified"


def test_a_verified_file_is_not_fetched_again(server: FileServer, home: Path) -> None:
    entry = _serve(server, "blob", _random_bytes())
    fetch(entry)
    again = fetch(entry)
    assert not again.downloaded and len(server.hits) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server: FileServer, home: Path) -> None:
    data = _random_bytes()
    entry = _serve(server, "blob", data)
    server.cut_once.add("/blob.bin")
    with pytest.raises(WeightsError, match=r"stopped after \d+ of 65536 bytes.*run the same command again"):
        fetch(entry)
    part = home / "blob.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not (home / "blob.bin").exists()
    fetched = fetch(entry)
    assert server.hits[-1] == ("/blob.bin", f"bytes={kept}-")
    assert fetched.path.read_bytes() == data and not part.exists()
    assert verify(entry).sha256 == entry.sha256


def test_a_checksum_mismatch_is_refused_and_the_bad_file_removed(server: FileServer, home: Path) -> None:
    entry = dataclasses.replace(_serve(server, "blob", _random_bytes()), sha256="0" * 64)
    with pytest.raises(WeightsMismatchError, match=r"has SHA-256 .* the published one of blob is 0000.*removed"):
        fetch(entry)
    assert not (home / "blob.bin").exists() and not (home / "blob.bin.part").exists()


def test_a_file_without_published_hash_is_checked_against_the_first_download(server: FileServer,
                                                                             home: Path) -> None:
    data = _random_bytes()
    entry = _serve(server, "blob", data, published=False)
    first = fetch(entry)
    assert not first.record.published
    damaged = bytearray(data)
    damaged[100] ^= 0xFF
    first.path.write_bytes(bytes(damaged))
    os.utime(first.path, ns=(time.time_ns(), first.record.mtime_ns + 1_000_000_000))
    with pytest.raises(WeightsMismatchError, match=r"recorded at the first download of blob.*fetch blob` replaces it"):
        verify(entry)
    assert status(entry).state == "bad"
    replaced = fetch(entry)  # the damaged file is fetched again and checked against the recorded hash
    assert replaced.downloaded and replaced.path.read_bytes() == data and len(server.hits) == 2
    server.files["/blob.bin"] = bytes(damaged)  # a server whose file changed is refused, not trusted anew
    replaced.path.unlink()
    with pytest.raises(WeightsMismatchError, match="recorded at the first download"):
        fetch(entry)


def test_offline_names_the_url_to_fetch_by_hand_and_where_to_put_it(home: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/weights/blob.bin"
    entry = WeightsEntry("blob", url, "blob.bin", "mobilesam", "test file")
    with pytest.raises(WeightsError) as caught:
        fetch(entry)
    message = str(caught.value)
    assert f"cannot reach {url}: the connection was refused" in message
    assert f"download it by hand to {home / 'blob.bin'} (e.g. curl -L -o {home / 'blob.bin'} {url})" in message


def test_cli_offline_error_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/fpseg_mobilesam.pth"
    monkeypatch.setitem(REGISTRY, "fpseg-mobilesam", dataclasses.replace(REGISTRY["fpseg-mobilesam"], url=url))
    assert fpseg_main(["weights", "fetch", "fpseg-mobilesam"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fpseg weights: error: cannot reach {url}") and err.count("\n") == 1
    assert "by hand" in err


def test_a_missing_file_on_the_server_is_reported(server: FileServer, home: Path) -> None:
    entry = WeightsEntry("gone", server.url("/gone.bin"), "gone.bin", "mobilesam", "test file")
    with pytest.raises(WeightsError, match=r"answered HTTP 404 .* by hand"):
        fetch(entry)


def test_concurrent_fetches_of_one_name_do_not_corrupt_the_cache(server: FileServer, home: Path) -> None:
    data = _random_bytes()
    entry = _serve(server, "blob", data)
    server.chunk_delay_s = 0.01  # ~0.16 s per download: the second fetch starts while the first runs
    start = threading.Barrier(2)
    results: list[object] = []

    def run() -> None:
        start.wait()
        try:
            results.append(fetch(entry))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(not isinstance(result, Exception) for result in results), results
    assert sorted(result.downloaded for result in results) == [False, True]
    assert len(server.hits) == 1 and (home / "blob.bin").read_bytes() == data
    assert not (home / "blob.bin.part").exists()


# --- the published FPSeg name: bank, from_pretrained, the CLI and the node -------------------------------

@pytest.fixture()
def fpseg_served(server: FileServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WeightsEntry:
    """The registry's fpseg-mobilesam entry pointed at a tiny 33-class FPSeg checkpoint on the test server."""
    torch.manual_seed(0)
    config = tiny_config("mobilesam", n_classes=len(BANK33), prompt_size=4, img_size=128)
    path = save_checkpoint(build_fpseg(config), config, list(BANK33), tmp_path / "served.pth")
    server.files["/weights/fpseg_mobilesam.pth"] = path.read_bytes()
    entry = dataclasses.replace(REGISTRY["fpseg-mobilesam"], url=server.url("/weights/fpseg_mobilesam.pth"))
    monkeypatch.setitem(REGISTRY, "fpseg-mobilesam", entry)
    return entry


def test_fetching_the_fpseg_weights_writes_the_named_bank(fpseg_served: WeightsEntry, home: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert fpseg_main(["weights", "fetch", "fpseg-mobilesam"]) == 0
    out = capsys.readouterr().out
    bank_path = home / fpseg_served.bank_filename
    assert "fpseg-mobilesam: downloaded and verified" in out and str(bank_path) in out
    assert PromptBank.load(bank_path).names == list(BANK33)
    assert fpseg_main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"fpseg-mobilesam\s+verified\s+fpseg_mobilesam\.pth: .*recorded at first download", listed)
    assert re.search(r"mobilesam\s+missing\s+mobile_sam\.pt: `fpseg weights fetch mobilesam`", listed)


def test_from_pretrained_and_names_wherever_a_checkpoint_goes(fpseg_served: WeightsEntry, home: Path,
                                                              tmp_path: Path) -> None:
    assert fpseg_main(["weights", "fetch", "fpseg-mobilesam"]) == 0
    bank_path = str(home / fpseg_served.bank_filename)
    model = FPSeg.from_pretrained("fpseg-mobilesam")
    assert model.classes == list(BANK33) and model.bank.path == bank_path  # the cached named bank
    pipeline = load_pipeline("fpseg-mobilesam", device="cpu")  # the node's checkpoint parameter
    assert pipeline.classes == list(BANK33) and pipeline.bank.path == bank_path
    args = build_parser().parse_args(["segment", "frame.png", "--checkpoint", "fpseg-mobilesam",
                                      "--out", str(tmp_path / "out")])
    assert load_model(args).bank.path == bank_path


def test_a_name_not_in_the_cache_names_the_fetch_command(home: Path, tmp_path: Path) -> None:
    missing = r"fpseg-mobilesam is not in the cache .*; fetch it once with `fpseg weights fetch fpseg-mobilesam`$"
    with pytest.raises(WeightsError, match=missing):
        FPSeg.from_pretrained("fpseg-mobilesam")
    with pytest.raises(WeightsError, match="`fpseg weights fetch mobilesam`"):
        load_pipeline("mobilesam")
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(WeightsError, match=f"`fpseg weights fetch sam-vit-b --dir {elsewhere}`"):
        FPSeg.from_pretrained("sam-vit-b", home=elsewhere)
    assert not any(home.glob("*.pth")) and not any(home.glob("*.pt"))  # nothing was downloaded


def test_names_and_paths_resolve_as_expected(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="unknown weights name 'vit-x'; choose one of mobilesam, sam-vit-b"):
        FPSeg.from_pretrained("vit-x")
    with pytest.raises(WeightsError, match="'fpseg-mobilsam' is neither a file nor a weights name"):
        resolve_checkpoint("fpseg-mobilsam")
    assert resolve_checkpoint("/nonexistent/model.pth").checkpoint == Path("/nonexistent/model.pth")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mobilesam").write_bytes(b"x")  # an existing path wins over a name
    resolved = resolve_checkpoint("mobilesam")
    assert resolved.checkpoint == Path("mobilesam") and resolved.prompts is None


def test_a_file_placed_by_hand_is_verified_against_the_published_hash(server: FileServer, home: Path) -> None:
    data = _random_bytes()
    entry = _serve(server, "blob", data)
    home.mkdir(parents=True)
    (home / "blob.bin").write_bytes(data)
    assert verify(entry).published and not server.hits
    (home / "blob.bin").write_bytes(data[:-1] + b"?")
    assert status(entry).state == "bad"
