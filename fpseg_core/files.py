"""Writing files safely, and saying why a file cannot be read.

Every file the project writes goes through `atomic_write`: the content is written to a temporary file in
the destination's folder, flushed to disk, given the permissions a plain `open(path, "w")` would give
under the current umask (libraries such as safetensors and `tempfile.mkstemp` create files 0600), and
renamed over the destination in one step. A reader therefore sees either the old file or the whole new
one, never a truncated one, and an interrupted write leaves the old file as it was.

`check_output` is the one rule for destinations: an existing output is refused unless overwriting was
asked for, and an output that is one of the command's inputs is always refused.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .errors import FPSegError

TEMP_SUFFIX = ".tmp"

# What the first bytes of a file say it is (see `file_kind`).
SNIFF_BYTES = 512
SAFETENSORS_LENGTH_BYTES = 8
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on its JSON header
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format: a pickle starting with PROTO 2..5
TEXT_CONTROLS = "\n\r\t\f"


class OutputExistsError(FPSegError, FileExistsError):
    """An output path that exists (and overwriting was not asked for) or that names one of the inputs."""


def current_umask() -> int:
    """The process umask, read without changing it (Linux /proc), else by the set-and-restore idiom."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` creates a file with under the current umask (0644 under 022)."""
    return 0o666 & ~current_umask()


def apply_default_mode(path: str | Path) -> None:
    """Give `path` the umask's mode, whatever the library that created it chose."""
    os.chmod(path, default_file_mode())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it replaces `path` atomically.

    The caller (or the library it calls) writes the whole file to the yielded path. On leaving the block
    the file is fsynced, given the umask's mode and renamed over `path`; on an exception (including
    KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        apply_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` to produce the file, then move it into place atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def install_staged(scratch: str | Path, names: Sequence[str], out: str | Path) -> None:
    """Move the finished files `names` from the folder `scratch` (on the file system of `out`, e.g. a
    temporary folder inside it) into `out`, each flushed to disk and renamed over its destination in one step,
    in the order given (put a graph's weights before the graph that refers to them). Nothing is copied: a
    multi-GB graph needs no second copy's disk space."""
    out = Path(out)
    for name in names:
        staged = Path(scratch) / name
        with open(staged, "rb+") as written:
            os.fsync(written.fileno())
        apply_default_mode(staged)
        os.replace(staged, out / name)
    _fsync_dir(out)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = (),
                 flag: str = "--overwrite") -> Path:
    """Refuse `path` if it is one of `inputs` (always) or exists (unless `overwrite`); returns it as a Path.

    `flag` names the option that allows overwriting, for the message.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputExistsError(f"output {path} is also an input ({source}); choose another output path")
    if path.is_dir():
        raise OutputExistsError(f"output {path} is an existing folder, where a file is to be written; choose "
                                "another path")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists; choose another path or pass {flag} to replace it")
    return path


def describe_unreadable(path: str | Path) -> str | None:
    """Why the current user cannot read `path` (owner, mode, user), or None when it is readable / absent."""
    path = Path(path)
    try:
        info = path.stat()
    except PermissionError:
        return (f"{path} cannot be reached: a folder on its path is not searchable by user "
                f"{_user_name(os.geteuid())}")
    except OSError:
        return None
    if os.access(path, os.R_OK):
        return None
    return (f"{path} is not readable by user {_user_name(os.geteuid())} (uid {os.geteuid()}): it belongs to "
            f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)} with mode {stat.filemode(info.st_mode)} "
            f"({stat.S_IMODE(info.st_mode):04o}); make it readable, e.g. chmod a+r {path}")


def permission_message(path: str | Path, exc: PermissionError) -> str:
    """The message for a PermissionError reading `path`: who owns it and who the process runs as."""
    return describe_unreadable(path) or (
        f"{path} is not readable by user {_user_name(os.geteuid())}: {exc.strerror or exc}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def unreadable_reason(path: Path, what: str) -> str | None:
    """Why `path` cannot be read as a `what` file (not readable, a directory, missing), or None when it can."""
    reason = describe_unreadable(path)
    if reason:
        return reason
    if path.is_dir():
        return f"{path} is a directory, not a {what} file; pass the file itself"
    if not path.exists():
        return f"{what} {path} does not exist"
    if not path.is_file():
        return f"{path} is not a regular file; pass a {what} file"
    return None


def file_kind(path: Path) -> str:
    """What the first bytes of `path` say it is: 'empty', 'safetensors', 'torch' (a torch.save zip or legacy
    pickle), 'text' or 'unknown'. Raises OSError (e.g. PermissionError) when it cannot be opened."""
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)
    if not head:
        return "empty"
    n = SAFETENSORS_LENGTH_BYTES
    if head[n:n + 1] == b"{" and int.from_bytes(head[:n], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"
    if head.startswith(ZIP_MAGIC) or (head[0] == 0x80 and len(head) > 1 and head[1] in PICKLE_PROTOCOLS):
        return "torch"
    return "text" if _looks_like_text(head) else "unknown"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # only a character cut off by the sniff window is fine
            return False
        text = head[:exc.start].decode("utf-8")
    return all(c.isprintable() or c in TEXT_CONTROLS for c in text)
