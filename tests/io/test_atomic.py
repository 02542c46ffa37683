"""Atomic writes: all or nothing, no stray temporary files, no silent overwrite."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from petflare.errors import OutputExistsError
from petflare.io.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    atomic_write_with,
    check_can_write,
)
from petflare.io.nifti import save_nifti


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "result.nii.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failure_keeps_existing_file_when_overwriting(tmp_path):
    target = atomic_write_text(tmp_path / "report.json", "old")

    def broken_writer(path):
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, broken_writer, overwrite=True)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_refuses_to_overwrite_and_names_the_file(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "first")
    with pytest.raises(OutputExistsError, match="a.txt: already exists"):
        atomic_write_text(target, "second")
    with pytest.raises(OutputExistsError):
        check_can_write(target)
    assert target.read_text() == "first"
    atomic_write_text(target, "second", overwrite=True)
    assert target.read_text() == "second"


def test_output_file_gets_umask_permissions(tmp_path):
    """Regression: mkstemp's 0600 mode used to leak into every output file."""
    old = os.umask(0o022)
    try:
        path = save_nifti(np.ones((2, 2, 2), np.float32), np.eye(4), tmp_path / "x.nii.gz")
        text = atomic_write_text(tmp_path / "y.txt", "y")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "z.txt").write_text("z")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(text.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


def test_atomic_directory_all_or_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "checkpoint.ckpt").write_text("x")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(target) as tmp:
        (tmp / "metadata.json").write_text("{}")
    assert (target / "metadata.json").read_text() == "{}"
    with pytest.raises(OutputExistsError, match="not empty"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_input_errors_survive_pickling() -> None:
    """Errors cross process boundaries (feature workers) whole: type, file and problem."""
    import pickle

    from petflare.errors import OutputExistsError, PetflareInputError

    for err in (
        PetflareInputError("/data/p1/SUV.nii.gz", "not a NIfTI file"),
        PetflareInputError(None, "no pattern label"),
        OutputExistsError("/out/report.json", "exists; pass overwrite=true"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert (back.path, back.problem, str(back)) == (err.path, err.problem, str(err))
