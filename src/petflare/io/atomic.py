"""Atomic file writing: write to a temporary sibling, then rename, so no reader sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from petflare.errors import OutputExistsError


def check_can_write(path: str | Path, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path, raising if it exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "already exists; pass overwrite=true to replace it")
    return path


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success rename it onto ``path``.

    The temporary file keeps the target's suffixes (``.nii.gz``) so writers that infer the
    format from the name behave. On any exception the temporary file is removed and ``path``
    is untouched.
    """
    path = check_can_write(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if path.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(path, "appeared while writing; refusing to replace it")
        if tmp.is_file():  # mkstemp makes 0600 files; give the output the usual umask mode
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    """The process umask (read by setting and restoring it; os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_with(
    path: str | Path, writer: Callable[[Path], object], overwrite: bool = False
) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        writer(tmp)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path``.

    An existing non-empty ``path`` is refused unless ``overwrite``; on failure nothing of the
    temporary folder remains and ``path`` is unchanged.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(path, "exists and is not empty; pass overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes 0700 folders
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
