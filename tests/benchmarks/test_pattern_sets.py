"""petflare.benchmarks.pattern: robustness sets are described against the head's training range."""

from __future__ import annotations

from pathlib import Path

from petflare.benchmarks import pattern as bench


def test_sets_are_outside_the_recorded_training_range() -> None:
    wide = {"spacing_inplane_mm": [3.0, 5.0], "spacing_slice_mm": [3.0, 5.0]}
    meta = {"training": {"phantom_pairs": {"train_seed": 1, "phantom": wide}}}
    train = bench.training_phantom(meta)
    assert train.spacing_inplane_mm == (3.0, 5.0)
    for name in bench.SETS:
        title = bench.set_title(name, train)
        assert "overlaps" not in title, title
    assert "training: in-plane 3.0-5.0 mm" in bench.set_title("spacing", train)
    assert "training: 0%-0%" in bench.set_title("graded", train)


def test_appearance_sets_report_a_training_range_that_covers_them() -> None:
    phantom = {"lesion_falloff": [0.0, 0.8], "noise_corr_mm": [2.0, 9.0]}
    train = bench.training_phantom({"training": {"phantom_pairs": {"phantom": phantom}}})
    assert "(within the training range)" in bench.set_title("graded", train)
    assert "overlaps the training range" in bench.set_title("texture", train)


def test_overlap_is_reported_and_config_fallback_is_read() -> None:
    # an older head.json: the overrides only in the recorded config
    meta = {"config": {"data": {"phantom": {"noise_cv_liver": [0.05, 0.5]}}}}
    train = bench.training_phantom(meta)
    assert train.noise_cv_liver == (0.05, 0.5)
    assert "overlaps the training range" in bench.set_title("noise", train)
    assert "overlaps" not in bench.set_title("spacing", train)  # defaults: 3.6-4.4 mm
    assert "overlaps" in bench.set_title(
        "shift20",
        bench.training_phantom(
            {"training": {"phantom_pairs": {"phantom": {"max_shift_mm": 25.0}}}}
        ),
    )


def test_extra_training_sets_widen_the_training_range() -> None:
    """A head trained on a main set and an extra, wider set: the sets are described against the
    union of both, so an extra set reaching into a robustness set's range is flagged."""
    extra = {"noise_cv_liver": [0.06, 0.5], "spacing_inplane_mm": [3.0, 5.0]}
    meta = {
        "training": {
            "phantom_pairs": {
                "phantom": {},
                "extra_train_sets": [{"n_pairs": 4, "seed": 7, "phantom": extra}],
            }
        }
    }
    train = bench.training_phantom(meta)
    assert train.noise_cv_liver == (0.06, 0.5)
    assert train.spacing_inplane_mm == (3.0, 5.0)
    assert train.spacing_slice_mm == (3.3, 4.5)  # both sets keep the default slices
    assert "overlaps the training range" in bench.set_title("noise", train)
    assert "overlaps" not in bench.set_title("spacing", train)


def test_scanner_mix_set_says_whether_training_covered_it() -> None:
    shipped_like = bench.training_phantom({"training": {"phantom_pairs": {"phantom": {}}}})
    assert "(wider than training)" in bench.set_title("scanners", shipped_like)
    wide = {
        "spacing_inplane_mm": [3.0, 5.0],
        "spacing_slice_mm": [3.0, 5.0],
        "psf_fwhm_mm": [4.5, 9.0],
        "noise_cv_liver": [0.06, 0.4],
    }
    meta = {
        "training": {
            "phantom_pairs": {
                "phantom": {},
                "extra_train_sets": [{"n_pairs": 64, "seed": 3300, "phantom": wide}],
            }
        }
    }
    title = bench.set_title("scanners", bench.training_phantom(meta))
    assert "within the training range" in title and "voxels 3-5 mm" in title


def test_pet_only_set_reads_the_main_pairs_without_ct(tmp_path: Path) -> None:
    import csv

    import nibabel as nib
    import numpy as np

    folder = tmp_path / "test_n2_seed7"
    folder.mkdir()
    rows = []
    for i in range(2):
        row = {"patient_id": f"P{i}", "pattern": "controlled", "split": "test"}
        for tp in ("baseline", "followup"):
            for kind in ("pet", "ct", "mask"):
                name = f"P{i}_{tp}_{kind}.nii.gz"
                nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / name)
                row[f"{tp}_{kind}"] = name
        rows.append(row)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    main = bench.set_rows(tmp_path, "main", 2, 7)
    pet_only = bench.set_rows(tmp_path, "pet_only", 2, 7)
    assert [r["patient_id"] for r in pet_only] == [r["patient_id"] for r in main]
    assert all(r["baseline_ct"] and r["followup_ct"] for r in main)
    assert all(r["baseline_ct"] is None and r["followup_ct"] is None for r in pet_only)
    assert all(r["baseline_pet"] == m["baseline_pet"] for r, m in zip(pet_only, main, strict=True))
    assert "without CT" in bench.set_title("pet_only", None)


def test_heart_set_is_described_against_the_training_hearts() -> None:
    shipped_like = bench.training_phantom({"training": {"phantom_pairs": {"phantom": {}}}})
    assert "training: 2-8" in bench.set_title("heart", shipped_like)
    assert "overlaps" not in bench.set_title("heart", shipped_like)
    hot = {"myocardium_suv": [2.0, 18.0]}
    meta = {"training": {"phantom_pairs": {"phantom": {}, "extra_train_sets": [{"phantom": hot}]}}}
    assert "overlaps the training range" in bench.set_title("heart", bench.training_phantom(meta))


def test_seeds_seen_include_a_recalibrated_heads_calibration_sets() -> None:
    meta = {
        "training": {
            "phantom_pairs": {
                "train_seed": 3100,
                "val_seed": 3200,
                "extra_train_sets": [{"seed": 3300}],
                "extra_val_sets": [],
            }
        },
        "recalibration": {
            "previous_temperature": 1.8,
            "data": {"phantom_pairs": {"val_seed": 3200, "extra_val_sets": [{"seed": 3210}]}},
        },
    }
    assert bench.seeds_seen(meta) == {3100, 3200, 3300, 3210}
    assert bench.seeds_seen({"training": {"manifest": "pairs.csv", "phantom_pairs": None}}) == set()


def test_phantom_v2_set_is_the_training_preset_and_says_whether_the_head_saw_it() -> None:
    import yaml

    from petflare.synth import PhantomConfig

    preset = yaml.safe_load((bench.project_dir() / "configs" / "synth" / "v2.yaml").read_text())
    v2 = bench.SETS["v2"]
    assert v2["brain_suv"] == tuple(preset["brain_suv"]) and "defaults" not in v2
    assert (
        PhantomConfig(**v2).myocardium_patchy_probability == preset["myocardium_patchy_probability"]
    )
    default_head = bench.training_phantom({"training": {"phantom_pairs": {"phantom": {}}}})
    assert "(wider than the head's recorded phantom training" in bench.set_title("v2", default_head)
    v2_head = bench.training_phantom(
        {
            "training": {
                "phantom_pairs": {
                    "phantom": {k: list(v) if isinstance(v, tuple) else v for k, v in v2.items()}
                }
            }
        }
    )
    assert "(within the recorded phantom training range)" in bench.set_title("v2", v2_head)


def test_a_missing_preset_is_named(tmp_path: Path) -> None:
    import pytest

    from petflare.errors import PetflareInputError

    with pytest.raises(PetflareInputError, match="no_such_preset"):
        bench.preset_overrides("no_such_preset")
