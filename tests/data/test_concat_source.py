"""ConcatSource: training lists joined, validation from the first source only."""

from __future__ import annotations

from pathlib import Path

import pytest

from petflare.data import BlobSource, ConcatSource


def test_training_lists_join_and_validation_comes_from_the_first(tmp_path: Path) -> None:
    first = BlobSource(tmp_path / "a", n_train=2, n_val=1, shape=(12, 12, 10), seed=1)
    second = BlobSource(tmp_path / "b", n_train=3, n_val=2, shape=(12, 12, 10), seed=2)
    lists = ConcatSource([first, second]).datalists()
    assert len(lists["train"]) == 5
    assert [e["pet"] for e in lists["val"]] == [e["pet"] for e in first.datalists()["val"]]
    assert all(str(tmp_path / "a") in str(e["pet"]) for e in lists["val"])


def test_needs_a_source() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ConcatSource([])


def test_named_sources_keep_their_order(tmp_path: Path) -> None:
    first = BlobSource(tmp_path / "a", n_train=1, n_val=1, shape=(12, 12, 10), seed=1)
    second = BlobSource(tmp_path / "b", n_train=2, n_val=1, shape=(12, 12, 10), seed=2)
    lists = ConcatSource({"phantoms": first, "hybrid": second}).datalists()
    assert len(lists["train"]) == 3 and len(lists["val"]) == 1
    assert str(tmp_path / "a") in str(lists["val"][0]["pet"])
