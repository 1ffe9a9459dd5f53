"""The atomic-write helper: whole files or nothing, the umask's mode, and the output rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fpseg_core.files import (
    OutputExistsError,
    atomic_write,
    atomic_write_text,
    check_output,
    default_file_mode,
    describe_unreadable,
    permission_message,
)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_mode_follows_the_umask(tmp_path: Path, umask: int) -> None:
    path = atomic_write_text(tmp_path / "report.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask == default_file_mode()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_library_that_creates_0600_files_still_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    def write_private(tmp: Path) -> None:
        tmp.write_bytes(b"data")
        os.chmod(tmp, 0o600)

    path = atomic_write(tmp_path / "bank.safetensors", write_private)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    path.write_bytes(b"old")

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]


def test_check_output_refuses_existing_and_input_paths(tmp_path: Path) -> None:
    existing = tmp_path / "out.png"
    existing.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="exists; choose another path or pass --overwrite"):
        check_output(existing)
    assert check_output(existing, overwrite=True) == existing
    with pytest.raises(OutputExistsError, match="is also an input"):
        check_output(tmp_path / "." / "out.png", overwrite=True, inputs=[existing])
    with pytest.raises(OutputExistsError, match="existing folder"):
        check_output(tmp_path)
    assert check_output(tmp_path / "new.png") == tmp_path / "new.png"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; the mocked error path is tested below")
def test_unreadable_file_is_described(tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    path.write_bytes(b"x")
    path.chmod(0)
    message = describe_unreadable(path)
    assert message is not None and "not readable by user" in message and "----------" in message


def test_permission_message_names_owner_mode_and_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bank.safetensors"
    path.write_bytes(b"x")
    path.chmod(0o600)
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)
    message = permission_message(path, PermissionError(13, "Permission denied"))
    assert "not readable by user" in message
    assert "-rw-------" in message and "(0600)" in message and "chmod a+r" in message
