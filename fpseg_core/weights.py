"""Published weights by name: a registry, a local cache, a one-time fetch and name resolution.

Nothing here downloads implicitly: `fetch` (the `fpseg weights fetch NAME` command) is the only call that
touches the network. Everything else (`resolve_checkpoint`, `FPSeg.from_pretrained`, the node's
`checkpoint` parameter) reads the cache and, when a file is missing, says which command fetches it.

The cache is a folder, `$FPSEG_HOME` (default ~/.cache/fpseg), holding the files under their published
names and `manifest.json`, which records each file's SHA-256 with the size and modification time it had
when it was hashed. A file is verified against its published SHA-256 where one is known, else against the
SHA-256 recorded at its first download (or first use, for a file placed by hand); it is hashed again only
when its size or modification time changed. A download goes to `<file>.part` (resumed with an HTTP Range
request after an interruption), is verified, and only then renamed into place; a lock file per name
(fcntl.flock) keeps concurrent fetches of one name from writing the same `.part`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from .errors import FPSegError
from .files import atomic_write_text

logger = logging.getLogger(__name__)

HOME_ENV = "FPSEG_HOME"
DEFAULT_HOME = "~/.cache/fpseg"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fpseg-weights-manifest/1"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
USER_AGENT = "fpseg-weights (urllib)"
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416


class WeightsError(FPSegError):
    """A weights file that is not in the cache, cannot be fetched or does not verify."""


class WeightsMismatchError(WeightsError):
    """A file whose size or SHA-256 is not the one it must have."""


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable file: where it comes from and what it must be.

    `size` / `sha256` are None where no value is known (the SHA-256 is then recorded at the first download
    and checked from then on). `bank_filename` names the prompt bank `fpseg weights fetch` writes next to a
    checkpoint that carries trained prompts; `encoder` is the encoder the file must hold.
    """

    name: str
    url: str
    filename: str
    encoder: str
    description: str
    size: int | None = None
    sha256: str | None = None
    bank_filename: str | None = None


SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# SAM's file names end in the first 6 hex digits of the file's MD5 (not its SHA-256). Only SAM ViT-H's
# SHA-256 is published by its authors; the SHA-256 values (and sizes) of the other three files are those
# many independent downloaders record (e.g. micro_sam's model registry). The FPSeg file has no published
# hash: it is recorded at the first download.
REGISTRY: dict[str, WeightsEntry] = {entry.name: entry for entry in (
    WeightsEntry("mobilesam", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                 "mobile_sam.pt", "mobilesam", "MobileSAM (TinyViT-5M encoder + SAM decoder), no trained prompts",
                 size=40_728_226, sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
    WeightsEntry("sam-vit-b", SAM_URL + "sam_vit_b_01ec64.pth", "sam_vit_b_01ec64.pth", "vit_b",
                 "SAM ViT-B, no trained prompts",
                 size=375_042_383, sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    WeightsEntry("sam-vit-l", SAM_URL + "sam_vit_l_0b3195.pth", "sam_vit_l_0b3195.pth", "vit_l",
                 "SAM ViT-L, no trained prompts",
                 sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    WeightsEntry("sam-vit-h", SAM_URL + "sam_vit_h_4b8939.pth", "sam_vit_h_4b8939.pth", "vit_h",
                 "SAM ViT-H, no trained prompts",
                 size=2_564_550_879, sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    # The file name is the one FPSeg's own configs/eval_config.yaml loads (weights/fpseg_mobilesam.pth); it
    # is to be confirmed against the repository's weights/ folder.
    WeightsEntry("fpseg-mobilesam", "https://github.com/JanKrabbe/FPSeg/raw/main/weights/fpseg_mobilesam.pth",
                 "fpseg_mobilesam.pth", "mobilesam",
                 "published FPSeg weights (MobileSAM, 33 Cityscapes entries, prompt size 64)",
                 bank_filename="fpseg_mobilesam_cityscapes33.safetensors"),
)}


@dataclass(frozen=True)
class Record:
    """What the manifest knows about one cached file."""

    sha256: str
    size: int
    mtime_ns: int
    published: bool  # True: checked against the registry's SHA-256; False: recorded at first download / use

    def matches(self, info: os.stat_result) -> bool:
        return self.size == info.st_size and self.mtime_ns == info.st_mtime_ns


@dataclass(frozen=True)
class Resolved:
    """A checkpoint path and the prompt bank that goes with it (a cached name's named bank, else None)."""

    checkpoint: Path
    prompts: Path | None = None


@dataclass(frozen=True)
class Fetched:
    path: Path
    downloaded: bool  # False: the cache already held the verified file
    record: Record


@dataclass(frozen=True)
class CacheStatus:
    """One registry entry in the cache: state is 'verified', 'missing', 'partial' or 'bad'; detail says
    more (and, for anything but 'verified', the fix)."""

    entry: WeightsEntry
    path: Path
    state: str
    detail: str


def cache_dir(home: str | Path | None = None) -> Path:
    """The cache folder: `home` if given, else $FPSEG_HOME, else ~/.cache/fpseg."""
    return Path(home if home is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def fetch_command(name: str, home: str | Path | None = None) -> str:
    """The shell command that fetches `name` into `home` (or the default cache)."""
    folder = cache_dir(home)
    return f"fpseg weights fetch {name}" + ("" if folder == cache_dir() else f" --dir {folder}")


def lookup(name: str, registry: Mapping[str, WeightsEntry] | None = None) -> WeightsEntry:
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise WeightsError(f"unknown weights name {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- the manifest ---------------------------------------------------------------------------------------

def _manifest_path(home: Path) -> Path:
    return home / MANIFEST_NAME


def read_manifest(home: Path) -> dict[str, Record]:
    """filename -> Record for the files the cache has hashed (empty when there is no manifest yet)."""
    path = _manifest_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        return {name: Record(**fields) for name, fields in data["files"].items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WeightsError(f"{path} is damaged ({exc}); delete it (the cached files are hashed again)") from exc


@contextlib.contextmanager
def _locked(home: Path, name: str) -> Iterator[None]:
    """An exclusive fcntl.flock on `home/.<name>.lock` for the block (waits for another holder)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f".{name}{LOCK_SUFFIX}", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process fetching %s in %s", name, home)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _store_record(home: Path, filename: str, record: Record) -> None:
    """Set one file's record: read-modify-write under the manifest's lock, written atomically."""
    with _locked(home, MANIFEST_NAME):
        records = read_manifest(home)
        records[filename] = record
        data = {"format": MANIFEST_FORMAT, "files": {name: vars(rec) for name, rec in sorted(records.items())}}
        atomic_write_text(_manifest_path(home), json.dumps(data, indent=2) + "\n")


# --- verification ---------------------------------------------------------------------------------------

def _check_content(entry: WeightsEntry, path: Path, expected: str | None, what: str) -> str:
    """The SHA-256 of `path` after checking its size and hash against `entry` / `expected`;
    WeightsMismatchError (naming the file, both values and `what` it is) on a mismatch."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsMismatchError(f"{what} {path} has {size} bytes, {entry.name} has {entry.size}")
    digest = sha256_of(path)
    if expected is None or digest == expected:
        return digest
    if expected == entry.sha256:
        raise WeightsMismatchError(f"{what} {path} has SHA-256 {digest}, the published one of {entry.name} is "
                                   f"{expected}")
    raise WeightsMismatchError(
        f"{what} {path} has SHA-256 {digest}, the one recorded at the first download of {entry.name} is "
        f"{expected} (if {entry.url} changed on purpose, delete {entry.filename!r} from "
        f"{_manifest_path(path.parent)})"
    )


def verify(entry: WeightsEntry, home: str | Path | None = None) -> Record:
    """Check the cached file of `entry`: against the manifest when its size and time are unchanged, else by
    hashing it (and recording the result). WeightsError when it is missing, WeightsMismatchError when it
    does not match."""
    home = cache_dir(home)
    path = home / entry.filename
    try:
        info = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"{entry.name} is not in the cache ({path} is missing); fetch it once with "
                           f"`{fetch_command(entry.name, home)}`") from None
    record = read_manifest(home).get(entry.filename)
    if record is not None and record.matches(info) and entry.sha256 in (None, record.sha256):
        return record
    expected = entry.sha256 or (record.sha256 if record else None)
    try:
        digest = _check_content(entry, path, expected, "cached file")
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"{exc}; `{fetch_command(entry.name, home)}` replaces it") from None
    record = Record(digest, info.st_size, info.st_mtime_ns, published=entry.sha256 is not None)
    with contextlib.suppress(OSError):  # a read-only cache still serves the file; it is hashed again next time
        _store_record(home, entry.filename, record)
    return record


def status(entry: WeightsEntry, home: str | Path | None = None) -> CacheStatus:
    """Where `entry` stands in the cache (see CacheStatus); never raises for a missing or bad file."""
    home = cache_dir(home)
    path = home / entry.filename
    part = path.with_name(path.name + PART_SUFFIX)
    command = fetch_command(entry.name, home)
    if not path.exists():
        if part.exists():
            return CacheStatus(entry, path, "partial", f"{part.stat().st_size} bytes downloaded; `{command}` "
                                                       "resumes")
        return CacheStatus(entry, path, "missing", f"`{command}`")
    try:
        record = verify(entry, home)
    except WeightsError as exc:
        return CacheStatus(entry, path, "bad", str(exc))
    how = "published SHA-256" if record.published else "SHA-256 recorded at first download"
    return CacheStatus(entry, path, "verified", f"{record.size} bytes, {how} {record.sha256[:12]}")


# --- name resolution ------------------------------------------------------------------------------------

def cached(entry: WeightsEntry, home: str | Path | None = None) -> Resolved:
    """The verified cached file of `entry` and its named bank (when the cache has one); never downloads."""
    home = cache_dir(home)
    verify(entry, home)
    bank = home / entry.bank_filename if entry.bank_filename else None
    return Resolved(home / entry.filename, bank if bank is not None and bank.is_file() else None)


def resolve_checkpoint(value: str | Path, home: str | Path | None = None,
                       registry: Mapping[str, WeightsEntry] | None = None) -> Resolved:
    """A checkpoint argument as a path: an existing file (or any path) as given, '~' expanded; a registry name
    (e.g. 'fpseg-mobilesam') that is not an existing path as its verified file in the cache, with its named
    bank. A missing cached file is a WeightsError naming the fetch command; nothing is downloaded."""
    registry = REGISTRY if registry is None else registry
    path = Path(value).expanduser()
    if path.exists():
        return Resolved(path)
    if str(value) in registry:
        return cached(registry[str(value)], home)
    if len(path.parts) == 1 and not path.suffix:
        raise WeightsError(f"checkpoint {str(value)!r} is neither a file nor a weights name; pass a .pth path or "
                           f"one of {', '.join(registry)}")
    return Resolved(path)


# --- fetching -------------------------------------------------------------------------------------------

def _by_hand(entry: WeightsEntry, path: Path) -> str:
    return f"download it by hand to {path} (e.g. curl -L -o {path} {entry.url})"


def _open(entry: WeightsEntry, offset: int, path: Path) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(entry.url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as exc:
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and offset:
            raise
        raise WeightsError(f"{entry.url} answered HTTP {exc.code} {exc.reason}; {_by_hand(entry, path)}") from None
    except (URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(reason, socket.gaierror):
            why = "the host name does not resolve (offline?)"
        elif isinstance(reason, ConnectionRefusedError):
            why = "the connection was refused"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {TIMEOUT_S:g} s"
        else:
            why = str(reason)
        raise WeightsError(f"cannot reach {entry.url}: {why}; {_by_hand(entry, path)}") from None


def _download(entry: WeightsEntry, part: Path, path: Path, progress: bool) -> None:
    """Fill `part` with the whole file, resuming from its current size with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(entry, offset, path)
    except HTTPError:  # 416: the partial file is as long as the server's file, or longer: start over
        part.unlink()
        offset, response = 0, _open(entry, 0, path)
    interrupted: Exception | None = None
    with response:
        if offset and response.status != HTTP_PARTIAL_CONTENT:  # the server ignored the Range: start over
            offset = 0
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise WeightsError(f"{entry.url} answered a range other than the one asked for "
                               f"({response.headers.get('Content-Range')}); run the same command again to start over")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else entry.size
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename,
            disable=not progress,
        ) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                interrupted = exc
            out.flush()
            os.fsync(out.fileno())
    size = part.stat().st_size
    if interrupted is not None or (total is not None and size < total):
        of_total = f" of {total}" if total is not None else ""
        raise WeightsError(f"the download of {entry.url} stopped after {size}{of_total} bytes "
                           f"({interrupted or 'the connection closed'}); run the same command again to resume it "
                           f"(kept: {part})")


def fetch(entry: WeightsEntry, home: str | Path | None = None, progress: bool = False) -> Fetched:
    """Make the cache hold the verified file of `entry`, downloading it only when it is missing or bad.

    The download resumes a `.part` left by an interrupted one, is checked (size, SHA-256: the published one,
    else the one recorded earlier, else it is recorded now) and renamed into place; a file that fails the
    check is removed. Concurrent fetches of one name wait for each other (the second finds the file there).
    """
    home = cache_dir(home)
    path = home / entry.filename
    with _locked(home, entry.filename):
        if path.exists():
            try:
                return Fetched(path, False, verify(entry, home))
            except WeightsMismatchError as exc:
                logger.warning("%s; fetching it again", exc)
                path.unlink()
        part = path.with_name(path.name + PART_SUFFIX)
        _download(entry, part, path, progress)
        record = read_manifest(home).get(entry.filename)
        expected = entry.sha256 or (record.sha256 if record else None)
        try:
            digest = _check_content(entry, part, expected, "downloaded file")
        except WeightsMismatchError as exc:
            part.unlink()
            raise WeightsMismatchError(f"{exc}; it was removed: fetch again, or {_by_hand(entry, path)}") from None
        os.replace(part, path)
        info = path.stat()
        record = Record(digest, info.st_size, info.st_mtime_ns, published=entry.sha256 is not None)
        _store_record(home, entry.filename, record)
        return Fetched(path, True, record)
