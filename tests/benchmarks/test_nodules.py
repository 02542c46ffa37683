"""petflare.benchmarks.nodules: nodule geometry, found / missed, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petflare.benchmarks import nodules as bench
from petflare_testing import make_tiny_model_folder


def test_ball_follows_the_affine() -> None:
    """A ball in world mm on a flipped, permuted, anisotropic grid has the sphere's volume."""
    affine = np.array(
        [[0.0, 0.0, -3.0, 40.0], [2.0, 0.0, 0.0, -30.0], [0.0, -2.5, 0.0, 20.0], [0, 0, 0, 1]]
    )
    centre_ijk = np.array([20, 18, 12])
    centre_mm = affine[:3, :3] @ centre_ijk + affine[:3, 3]
    inside = bench.ball((40, 36, 24), affine, centre_mm, 10.0)
    assert inside[tuple(centre_ijk)]
    voxel_ml = 3.0 * 2.0 * 2.5 / 1000
    assert inside.sum() * voxel_ml == pytest.approx(4 / 3 * np.pi * 1.0**3, rel=0.1)
    assert not inside[tuple(centre_ijk + [0, 0, 5])]  # 15 mm away along the 3 mm axis


@pytest.fixture(scope="module")
def nodule_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from petflare.synth import PhantomConfig, generate_dataset

    coarse = PhantomConfig(spacing_inplane_mm=(8.0, 9.0), spacing_slice_mm=(8.0, 9.0))
    folder = tmp_path_factory.mktemp("nodules")
    generate_dataset(folder, 2, 5, config=coarse, patterns=["nodule_within_mass", "controlled"])
    return folder


@pytest.mark.slow
def test_nodules_scored_and_reported(nodule_set: Path, tmp_path: Path, capsys) -> None:
    model = make_tiny_model_folder(tmp_path / "model", (8.0, 8.0, 8.0), roi_size_vox=(48, 48, 48))
    cases = bench.nodule_cases(nodule_set, None)
    assert len(cases) == 1  # the controlled pair has no nodule
    (row,) = bench.score(model, cases, 0.0)
    assert row["found"]
    # the measured SUVmax at the nodule (partial volume included) is above its host's uptake
    assert row["measured_suv_max"] > row["host_suv"]
    out = tmp_path / "nodules.md"
    assert (
        bench.main(["--data-dir", str(nodule_set), "--model-dir", str(model), "--out", str(out)])
        == 0
    )
    text = out.read_text()
    assert "| found |" in text and cases[0]["patient"] in text
    # an existing report is not replaced silently; a folder without truth is refused
    assert (
        bench.main(["--data-dir", str(nodule_set), "--model-dir", str(model), "--out", str(out)])
        == 2
    )
    assert bench.main(["--data-dir", str(tmp_path), "--model-dir", str(model)]) == 2
    assert "no truth" in capsys.readouterr().err
