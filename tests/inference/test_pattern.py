"""PatternClassifier and petflare-train-head end to end on a tiny model folder and tiny pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from petflare.constants import PATTERNS
from petflare.errors import PetflareInputError
from petflare.inference.pattern import (
    HEAD_METADATA_FILE,
    HEAD_WEIGHTS_FILE,
    PatternClassifier,
    explain,
    load_head,
)
from petflare.inference.pipeline import TimepointResult
from petflare.networks.change_head import HeadEnsemble
from petflare.quant import lesion_instances
from petflare_testing import REPO, load_module, make_tiny_model_folder

_tiny = load_module("_tiny_pairs", REPO / "tests" / "data" / "test_longitudinal.py")

NET_KWARGS = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}


def _model_folder(path: Path) -> Path:
    return make_tiny_model_folder(path, spacing_mm=(4.0, 4.0, 4.0), network_kwargs=NET_KWARGS)


def _train_head(
    tmp: Path, model_dir: Path, manifest: Path, *extra: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_head.py"),
            "experiment=head_debug",
            f"model_dir={model_dir}",
            f"data.manifest={manifest}",
            f"data.cache_dir={tmp / 'cache'}",
            f"output_dir={tmp / 'run'}",
            *extra,
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model folder with a head trained by the CLI on 4 train + 4 val tiny pairs (their
    features computed by two worker processes started from the script)."""
    tmp = tmp_path_factory.mktemp("head")
    model_dir = _model_folder(tmp / "model")
    patterns = list(PATTERNS) * 2
    manifest = _tiny.write_manifest(tmp / "pairs", patterns, ["train"] * 4 + ["val"] * 4)
    result = _train_head(tmp, model_dir, manifest, "data.features.workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head written to" in result.stdout
    assert "(2 processes)" in result.stderr  # the progress bar of the worker processes
    return model_dir, manifest


@pytest.mark.slow
def test_cli_writes_the_head_into_the_model_folder(trained: tuple[Path, Path]) -> None:
    model_dir, _ = trained
    meta = json.loads((model_dir / HEAD_METADATA_FILE).read_text())
    assert meta["classes"] == list(PATTERNS)
    assert meta["temperature"] > 0
    assert meta["validation"]["n"] == 4
    assert meta["training"]["val_mask_source"] == "ground_truth"
    assert meta["training"]["train_predicted_variant"] is True  # head_debug sets it
    run = json.loads((model_dir.parent / "run" / "head_run.json").read_text())
    assert run["n_train"] == 4 and run["n_val"] == 4
    head, _ = load_head(model_dir)
    assert sum(p.numel() for p in head.parameters()) == meta["n_parameters"]


@pytest.mark.slow
def test_cli_trains_and_serves_an_ensemble(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, manifest = trained
    model_dir = _model_folder(tmp_path / "model")
    result = _train_head(tmp_path, model_dir, manifest, "n_heads=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ensemble member 2/2 trained" in result.stdout
    meta = json.loads((model_dir / HEAD_METADATA_FILE).read_text())
    assert meta["head"]["n_members"] == 2 and meta["training"]["n_heads"] == 2
    head, _ = load_head(model_dir)
    assert isinstance(head, HeadEnsemble) and len(head.members) == 2
    assert sum(p.numel() for p in head.parameters()) == meta["n_parameters"]
    # the members differ (other random starts) and the call is their mean
    a, b = (dict(m.named_parameters()) for m in head.members)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    pred = PatternClassifier.from_folder(model_dir, device="cpu").predict(
        *_tiny.make_pair("diffuse_flare", seed=5)
    )
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(pred.lesion_weights) == len(pred.units)
    bad = _train_head(tmp_path, model_dir, manifest, "n_heads=0", "overwrite=true")
    assert bad.returncode == 2 and "n_heads" in bad.stderr


@pytest.mark.slow
def test_cli_cross_fit_calibrates_on_out_of_fold_pairs(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, manifest = trained
    model_dir = _model_folder(tmp_path / "model")
    result = _train_head(tmp_path, model_dir, manifest, "n_heads=2", "calibration=cross_fit")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 2/2 head trained" in result.stdout
    meta = json.loads((model_dir / HEAD_METADATA_FILE).read_text())
    assert meta["training"]["calibration"] == "cross_fit"
    assert meta["head"]["n_members"] == 2
    assert meta["cross_fit"]["n"] == 4  # every training pair scored by the head that skipped it
    run = json.loads((tmp_path / "run" / "head_run.json").read_text())
    assert run["n_calibration"] == 8  # 4 validation + 4 out-of-fold pairs
    assert run["n_train"] == 4
    bad = _train_head(
        tmp_path, model_dir, manifest, "n_heads=1", "calibration=cross_fit", "overwrite=true"
    )
    assert bad.returncode == 2 and "n_heads >= 2" in bad.stderr


@pytest.mark.slow
def test_cli_refuses_to_overwrite_a_head(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, manifest = trained
    result = _train_head(tmp_path, model_dir, manifest)
    assert result.returncode == 2
    assert "head.pt" in result.stderr and "overwrite" in result.stderr


@pytest.mark.slow
def test_cli_recalibrate_refits_only_the_temperature(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """recalibrate=true keeps head.pt byte for byte; on the very validation pairs the head was
    calibrated on it must find the training run's temperature again."""
    import shutil

    source, manifest = trained
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    before = json.loads((model_dir / HEAD_METADATA_FILE).read_text())
    weights = (model_dir / HEAD_WEIGHTS_FILE).read_bytes()
    refused = _train_head(tmp_path, model_dir, manifest, "recalibrate=true")
    assert refused.returncode == 2 and "overwrite=true" in refused.stderr
    assert json.loads((model_dir / HEAD_METADATA_FILE).read_text()) == before
    result = _train_head(tmp_path, model_dir, manifest, "recalibrate=true", "overwrite=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recalibrated on 4 pairs" in result.stdout
    after = json.loads((model_dir / HEAD_METADATA_FILE).read_text())
    assert (model_dir / HEAD_WEIGHTS_FILE).read_bytes() == weights
    assert after["weights"] == before["weights"] and after["head"] == before["head"]
    # the same pairs give the same logits: the uncalibrated metrics (ECE included) match exactly
    assert after["validation_uncalibrated"] == before["validation_uncalibrated"]
    assert after["temperature"] == pytest.approx(before["temperature"], rel=1e-6)
    assert after["recalibration"]["previous_temperature"] == before["temperature"]
    assert after["recalibration"]["n_calibration"] == 4
    assert after["validation"]["n"] == 4
    load_head(model_dir)  # still a valid head folder
    bare = _model_folder(tmp_path / "bare")
    no_head = _train_head(tmp_path, bare, manifest, "recalibrate=true", "overwrite=true")
    assert no_head.returncode == 2 and "no change-pattern head" in no_head.stderr


@pytest.mark.slow
def test_cli_missing_model_folder_exits_2(tmp_path: Path) -> None:
    result = _train_head(tmp_path, tmp_path / "nope", tmp_path / "manifest.csv")
    assert result.returncode == 2 and "nope" in result.stderr


def test_classifier_predicts_calibrated_probabilities(trained: tuple[Path, Path]) -> None:
    model_dir, _ = trained
    clf = PatternClassifier.from_folder(model_dir, device="cpu")
    base, fol = _tiny.make_pair("new_lesions", seed=11)
    pred = clf.predict(base, fol)
    assert pred.label in PATTERNS
    assert set(pred.probabilities) == set(PATTERNS)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    assert len(pred.lesion_weights) == len(pred.units) == 4
    assert pred.explanations and all(isinstance(e, str) for e in pred.explanations)
    # the temperature from head.json is applied
    assert (
        clf.temperature == json.loads((model_dir / HEAD_METADATA_FILE).read_text())["temperature"]
    )


def test_classifier_is_the_pipelines_pattern_head(trained: tuple[Path, Path]) -> None:
    model_dir, _ = trained
    clf = PatternClassifier.from_folder(model_dir, device="cpu")
    base, fol = _tiny.make_pair("nodule_within_mass", seed=12)
    tps = [
        TimepointResult(name=n, study=s, instances=lesion_instances(s.mask > 0), scan_report=None)
        for n, s in (("baseline", base), ("followup", fol))
    ]
    call = clf(tps[0], tps[1], None)
    assert call.source == "learned_head" and call.label in PATTERNS
    assert call.probabilities is not None and call.probability is not None
    assert call.evidence["explanations"]
    json.dumps(call.to_dict())  # JSON-serialisable for report.json


def test_zero_lesions_at_both_timepoints(trained: tuple[Path, Path]) -> None:
    model_dir, _ = trained
    clf = PatternClassifier.from_folder(model_dir, device="cpu")
    base, fol = _tiny.make_pair("controlled", seed=13)
    base.mask = np.zeros_like(base.mask)
    fol.mask = np.zeros_like(fol.mask)
    pred = clf.predict(base, fol)
    assert pred.units == [] and pred.lesion_weights == []
    assert pred.explanations == ["no lesion at either time point"]
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_unsafe_head_checkpoint_is_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = trained
    bad = tmp_path / "model"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    torch.save({"state_dict": {}, "payload": PatternClassifier}, bad / HEAD_WEIGHTS_FILE)
    with pytest.raises(PetflareInputError, match="head.pt"):
        load_head(bad)
    # a head trained on another version of the network is refused
    meta = json.loads((bad / HEAD_METADATA_FILE).read_text())
    meta["segmentation_weights_sha256"] = "0" * 64
    (bad / HEAD_METADATA_FILE).write_text(json.dumps(meta))
    (bad / HEAD_WEIGHTS_FILE).write_bytes((model_dir / HEAD_WEIGHTS_FILE).read_bytes())
    with pytest.raises(PetflareInputError, match="another version"):
        load_head(bad)
    (bad / HEAD_METADATA_FILE).unlink()
    with pytest.raises(PetflareInputError, match="no change-pattern head"):
        PatternClassifier.from_folder(bad, device="cpu")


def test_explanations_name_the_driving_lesion() -> None:
    unit = {
        "kind": "persisting",
        "followup_ids": [2],
        "baseline_ids": [2],
        "centre_mm": [12.3, -40.0, 101.6],
        "info": {
            "suv_max_followup": 9.1,
            "hotspot_suv_mean_followup": 7.0,
            "rest_suv_mean_followup": 2.3,
            "focal_ratio_followup": 3.0,
            "suv_peak_baseline": 4.0,
            "suv_peak_followup": 8.0,
            "uptake_rose": True,
            "suv_peak_change_pct": 100.0,
            "volume_ml_followup": 30.0,
        },
    }
    other = {
        **unit,
        "followup_ids": [1],
        "baseline_ids": [1],
        "info": {**unit["info"], "uptake_rose": False},
    }
    lines = explain("nodule_within_mass", [other, unit], [0.2, 0.8])
    assert lines[0].startswith(
        "focal nodule in follow-up lesion 2 at (12, -40, 102) mm: hotspot SUVmean 7.0 vs rest "
        "of the mass 2.3 (lesion SUVmax 9.1"
    )
    flare = explain("diffuse_flare", [other, unit], [0.5, 0.5])
    assert flare[0].startswith("1 of 2 persisting lesions re-activated")
    # a host whose nodule the follow-up mask missed is "resolved": the region's focus speaks
    host = {
        "kind": "resolved",
        "followup_ids": [],
        "baseline_ids": [3],
        "centre_mm": [0.0, 0.0, 0.0],
        "info": {
            **unit["info"],
            "focus_mm": [-36.3, -12.4, -355.8],
            "focus_suv_peak_baseline": 7.9,
            "focus_suv_peak_followup": 5.1,
            "region_suv_median_baseline": 6.8,
            "region_suv_median_followup": 1.3,
        },
    }
    lines = explain("nodule_within_mass", [other, host], [0.1, 0.9])
    assert lines[0] == (
        "focal uptake in baseline lesion 3 at (-36, -12, -356) mm: SUVpeak 5.1 (7.9 there at "
        "baseline) against a median SUV of 1.3 in the lesion's region (6.8 at baseline)"
    )
    # its empty follow-up mask is not quoted as an SUVpeak of 0: the site's uptake is
    assert lines[-1].endswith(
        "baseline lesion 3 (resolved, SUVpeak 4.0 -> not segmented, 5.1 at the site); "
        "follow-up lesion 1 (persisting, SUVpeak 4.0 -> 8.0)"
    )
    # a piece of a mass the follow-up segmentation cut up says so
    piece = {**host, "info": {**host["info"], "n_fragments": 3}}
    assert explain("nodule_within_mass", [other, piece], [0.1, 0.9])[0].endswith(
        "(baseline lesion 3 is one of 3 follow-up pieces of the same baseline mass)"
    )
    # a new lesion that is hot together with a much larger structure is flagged
    new_unit = {
        "kind": "new",
        "followup_ids": [4],
        "baseline_ids": [],
        "centre_mm": [10.0, 20.0, 30.0],
        "info": {**unit["info"], "baseline_site_uptake_ratio": 0.3, "hot_extent_ratio": 35.0},
    }
    organ = explain("new_lesions", [other, new_unit], [0.1, 0.9])
    assert organ[1].endswith(
        "hot together with a structure 35 times its size (physiological uptake such as heart, "
        "bowel or brown fat?)"
    )
    assert "follow-up lesion 4 (new, SUVpeak 4.0 -> 8.0)" in organ[-1]  # no focus measured
    measured = {**new_unit, "info": {**new_unit["info"], "focus_suv_peak_baseline": 2.2}}
    assert (
        "follow-up lesion 4 (new, SUVpeak not segmented, 2.2 at the site -> 8.0)"
        in (explain("new_lesions", [other, measured], [0.1, 0.9])[-1])
    )
    small = {**new_unit, "info": {**new_unit["info"], "hot_extent_ratio": 0.6}}
    assert "physiological" not in explain("new_lesions", [other, small], [0.1, 0.9])[1]
