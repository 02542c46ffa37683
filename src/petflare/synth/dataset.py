"""Generate longitudinal phantom pairs and write them as an autoPET folder plus a manifest."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from petflare.constants import MANIFEST_COLUMNS, PATTERNS, SPLITS, Keys
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_directory, atomic_write_text
from petflare.io.layouts import AUTOPET_ORGANS_STEM
from petflare.io.nifti import save_nifti
from petflare.io.study import Study, StudyMeta
from petflare.synth.anatomy import (
    Anatomy,
    Physiology,
    render_anatomy,
    sample_anatomy,
    sample_physiology,
)
from petflare.synth.canvas import Canvas
from petflare.synth.config import PhantomConfig
from petflare.synth.geometry import ScanGeometry
from petflare.synth.imaging import ScanSettings, form_ct, form_pet, sample_scan
from petflare.synth.lesions import LesionState, RenderedLesion, render_lesion
from petflare.synth.scenarios import Scenario, build_scenario
from petflare.synth.variability import (
    ScanExtras,
    Warp,
    add_faint_lesions,
    paint_extras,
    sample_extras,
    sample_warp,
    v2_streams,
    with_bladder_fill,
)

#: Version of the ground-truth JSON written next to the dataset.
TRUTH_SCHEMA_VERSION = "1.0"

#: Folder of a phantom set (beside its layout folder) holding one truth JSON per patient.
TRUTH_DIR = "truth"

#: Organ label map written beside SUV / CTres / SEG in each autoPET study folder (uint8,
#: values ``petflare.constants.ORGAN_TO_INDEX``, the study's affine).
ORGANS_FILE = f"{AUTOPET_ORGANS_STEM}.nii.gz"

#: Split fractions used by :func:`generate_dataset` (by patient, stratified by pattern).
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def _render(
    anatomy: Anatomy,
    phys: Physiology,
    scenario: Scenario,
    states: dict[int, LesionState],
    in_mask: dict[int, str],
    geometry: ScanGeometry,
    settings: ScanSettings,
    rng: np.random.Generator,
    config: PhantomConfig,
    extras: ScanExtras,
    warp: Warp | None,
    rng_extra: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Render one scan: (PET SUV, CT HU, instance mask, organ label map, true liver SUVmean).

    ``extras``, ``warp`` and ``rng_extra`` are phantom v2's (nothing changes without them).
    """
    canvas = Canvas(geometry, rng, tracked=("liver",))
    if warp is not None:
        canvas.set_warp(warp.on_grid(geometry))
    anatomy = with_bladder_fill(anatomy, extras.bladder_fill)
    render_anatomy(canvas, anatomy, phys, config.brown_fat_suv)
    paint_extras(canvas, anatomy, phys, extras, rng_extra)
    mask = np.zeros(geometry.shape, dtype=np.uint16)
    for lid in sorted(states):
        rendered = render_lesion(canvas, scenario.lesions[lid], states[lid])
        if rendered is None or lid not in in_mask:
            continue
        _label(mask, rendered, lid, in_mask[lid])
    liver_true = true_liver_suv_mean(canvas.suv, canvas.fractions["liver"], phys.liver)
    spacing = geometry.spacing_mm
    pet = form_pet(canvas.suv, spacing, settings, liver_true, rng)
    ct = form_ct(canvas.hu, spacing, settings, rng)
    dtype = np.uint8 if mask.max() < 256 else np.uint16
    organs = canvas.organs
    organs[mask > 0] = 0  # labelled lesion voxels are disease, never organ
    return pet, ct, mask.astype(dtype), organs, liver_true


#: A voxel is liver in the final label map when at least this fraction of its SUV is liver.
LIVER_VOXEL_FRACTION = 0.99


def true_liver_suv_mean(
    activity_suv: np.ndarray, liver_fraction: np.ndarray, level: float
) -> float:
    """True liver SUVmean: mean noise-free activity over the voxels that show liver only.

    Voxels count when the liver makes up at least ``LIVER_VOXEL_FRACTION`` of their final SUV,
    i.e. liver that is still visible as liver after organs, vessels and lesions painted over it
    (a liver metastasis or the right kidney is not liver) and away from its partial-volume
    border. Falls back to the drawn parenchymal ``level`` when no voxel qualifies.
    """
    liver = liver_fraction >= LIVER_VOXEL_FRACTION
    return float(activity_suv[liver].mean(dtype=np.float64)) if liver.any() else float(level)


def _label(mask: np.ndarray, rendered: RenderedLesion, lid: int, part: str) -> None:
    """Write lesion ``lid`` into the mask: its whole volume or only its nodule.

    Voxels at least half inside are labelled; a lesion smaller than half a voxel still gets
    its most-occupied voxel so that every avid lesion is in the mask.
    """
    if part == "nodule":
        sl, occ = rendered.nodule_sl, rendered.nodule_occupancy
        if sl is None or occ is None:
            return
    else:
        sl, occ = rendered.sl, rendered.occupancy
    region = mask[sl]
    inside = occ >= 0.5
    if not inside.any():
        inside = np.zeros_like(inside)
        inside[np.unravel_index(int(np.argmax(occ)), occ.shape)] = True
    region[inside] = lid


def _scale_heterogeneity(scenario: Scenario, factor: float) -> None:
    """Multiply every lesion state's uptake heterogeneity by ``factor`` (no random draws)."""
    for states in (scenario.baseline, scenario.followup):
        for lid, st in states.items():
            states[lid] = replace(st, heterogeneity=st.heterogeneity * factor)


def _draw_falloff(scenario: Scenario, falloff: tuple[float, float], seed: int) -> None:
    """Give every lesion a radial uptake falloff, the same at both timepoints.

    The draws come from a stream of their own (``seed``, not the scenario's generator), so the
    rest of the phantom is the same with and without falloff.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xFA11]))
    for lid in sorted(scenario.lesions):
        value = float(rng.uniform(*falloff))
        for states in (scenario.baseline, scenario.followup):
            if lid in states:
                states[lid] = replace(states[lid], falloff=value)


def _mask_parts(states: dict[int, LesionState], thr: float) -> dict[int, str]:
    """Which lesions are FDG-avid in a scan and which part is labelled ('whole' or 'nodule')."""
    parts: dict[int, str] = {}
    for lid, st in states.items():
        if st.suv >= thr:
            parts[lid] = "whole"
        elif st.nodule is not None and st.nodule.suv >= thr:
            parts[lid] = "nodule"
    return parts


def _r(v: Any, nd: int = 2) -> Any:
    """Round floats (and arrays/tuples of them) for the JSON ground truth."""
    if isinstance(v, (float, np.floating)):
        return round(float(v), nd)
    if isinstance(v, (np.ndarray, list, tuple)):
        return [_r(x, nd) for x in v]
    return v


def generate_pair(
    seed: int,
    pattern: str,
    config: PhantomConfig = PhantomConfig(),
    *,
    patient_id: str | None = None,
) -> tuple[Study, Study, dict[str, Any]]:
    """Simulate one patient's baseline and follow-up PET/CT with a known change pattern.

    Args:
        seed: all randomness derives from it (same seed and config -> identical arrays).
        pattern: one of ``petflare.constants.PATTERNS``.
        config: phantom parameters.
        patient_id: stored in the studies' metadata (default ``synth<seed>``).

    Returns:
        ``(baseline, followup, truth)``: studies with PET (SUV), CT (HU), an instance-labelled
        lesion mask (label = lesion id, persistent across timepoints) and an organ label map
        (``Study.organs``, values ``petflare.constants.ORGAN_TO_INDEX``), and the
        JSON-serialisable scenario ground truth (see docs/phantom.md).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    patient_id = patient_id or f"synth{seed}"
    rng_anat, rng_phys, rng_les, rng_geo, rng_b, rng_f = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    rng_v2, rng_v2_b, rng_v2_f = v2_streams(seed)
    anatomy = sample_anatomy(rng_anat, config.height_m, config.girth, config.arms_up_probability)
    phys_b = sample_physiology(rng_phys, None, config=config)
    phys_f = sample_physiology(rng_phys, phys_b, config=config)
    thr = {
        "baseline": config.avid_liver_ratio * phys_b.liver,
        "followup": config.avid_liver_ratio * phys_f.liver,
    }
    scenario = build_scenario(rng_les, anatomy, pattern, config, thr["baseline"], thr["followup"])
    if config.heterogeneity_scale != 1.0:
        _scale_heterogeneity(scenario, config.heterogeneity_scale)
    if config.lesion_falloff[1] > 0:
        _draw_falloff(scenario, config.lesion_falloff, seed)
    warp = sample_warp(rng_v2, config.organ_deformation_mm)
    faint = add_faint_lesions(
        rng_v2,
        anatomy,
        scenario,
        config.n_faint_lesions,
        config.faint_lesion_suv,
        max(phys_b.liver, phys_f.liver),
    )
    mask_ratio = (
        config.avid_liver_ratio if config.mask_liver_ratio is None else config.mask_liver_ratio
    )
    mask_thr = {
        "baseline": mask_ratio * phys_b.liver,
        "followup": mask_ratio * phys_f.liver,
    }

    table = np.array(
        [rng_geo.uniform(-60, 60), rng_geo.uniform(-80, 40), rng_geo.uniform(-300, 900)]
    )
    scans = {
        "baseline": sample_scan(rng_geo, anatomy, config, table),
        "followup": sample_scan(rng_geo, anatomy, config, table),
    }
    days = int(rng_geo.integers(42, 200))
    dates = {
        "baseline": "20240105",
        "followup": (np.datetime64("2024-01-05") + np.timedelta64(days, "D"))
        .astype(str)
        .replace("-", ""),
    }
    per_time = {
        "baseline": (phys_b, scenario.baseline, rng_b, rng_v2_b),
        "followup": (phys_f, scenario.followup, rng_f, rng_v2_f),
    }
    extras: dict[str, ScanExtras] = {}
    studies: dict[str, Study] = {}
    liver_true: dict[str, float] = {}
    parts: dict[str, dict[int, str]] = {}
    for tp, (phys, states, rng, rng_extra) in per_time.items():
        geometry, settings = scans[tp]
        parts[tp] = _mask_parts(states, mask_thr[tp])
        parts[tp].update({lid: "whole" for lid in faint})  # faint lesions are always labelled
        extras[tp] = sample_extras(rng_extra, config, phys)
        pet, ct, mask, organs, liver_true[tp] = _render(
            anatomy,
            phys,
            scenario,
            states,
            parts[tp],
            geometry,
            settings,
            rng,
            config,
            extras[tp],
            warp if config.organ_deformation_mm > 0 else None,
            rng_extra,
        )
        meta = StudyMeta(
            patient_id=patient_id,
            study_id=tp,
            study_date=dates[tp],
            sex=anatomy.sex,
            height_m=round(anatomy.height_mm / 1000.0, 3),
            weight_kg=anatomy.weight_kg,
            source={"generator": "petflare.synth", "seed": str(seed), "pattern": pattern},
        )
        studies[tp] = Study(
            pet=pet, affine=geometry.affine, ct=ct, mask=mask, meta=meta, organs=organs
        )
    truth = _truth(
        seed,
        patient_id,
        anatomy,
        scenario,
        scans,
        parts,
        thr,
        mask_thr,
        liver_true,
        {"baseline": phys_b, "followup": phys_f},
    )
    truth["faint_lesion_ids"] = faint
    truth["extras"] = {tp: {k: _r(v) for k, v in asdict(e).items()} for tp, e in extras.items()}
    truth["organ_deformation_mm"] = _r(config.organ_deformation_mm)
    return studies["baseline"], studies["followup"], truth


def _truth(
    seed: int,
    patient_id: str,
    anatomy: Anatomy,
    sc: Scenario,
    scans: dict[str, tuple[ScanGeometry, ScanSettings]],
    parts: dict[str, dict[int, str]],
    thr: dict[str, float],
    mask_thr: dict[str, float],
    liver_true: dict[str, float],
    phys: dict[str, Physiology],
) -> dict[str, Any]:
    """The scenario ground truth as a JSON-serialisable dict."""
    lesions = []
    nodule = None
    for lid, les in sorted(sc.lesions.items()):
        entry: dict[str, Any] = {
            "id": lid,
            "site": les.site,
            "change": sc.change.get(lid),
            "center_patient_mm": _r(les.center_mm, 1),
        }
        for tp, states in (("baseline", sc.baseline), ("followup", sc.followup)):
            st = states.get(lid)
            geometry = scans[tp][0]
            entry[tp] = (
                None
                if st is None
                else {
                    "center_world_mm": _r(geometry.patient_to_world(les.center_mm), 1),
                    "diameter_mm": _r(les.diameter_mm * st.scale, 1),
                    "suv": _r(st.suv),
                    "necrosis_fraction": _r(st.necrosis),
                    "uptake_falloff": _r(st.falloff),
                    "hu": _r(st.hu, 1),
                    "in_mask": parts[tp].get(lid),
                }
            )
            if st is not None and st.nodule is not None:
                center = les.nodule_center_mm(st)
                assert center is not None
                nodule = {
                    "lesion_id": lid,
                    "timepoint": tp,
                    "center_world_mm": _r(geometry.patient_to_world(center), 1),
                    "center_patient_mm": _r(center, 1),
                    "diameter_mm": _r(2 * st.nodule.radius_mm, 1),
                    "suv": _r(st.nodule.suv),
                    "host_suv": _r(st.suv),
                    "host_site": les.site,
                }
        lesions.append(entry)
    both = sorted(set(parts["baseline"]) & set(parts["followup"]))
    return {
        "schema_version": TRUTH_SCHEMA_VERSION,
        "seed": int(seed),
        "patient_id": patient_id,
        "pattern": sc.pattern,
        "anatomy": {
            "height_m": round(anatomy.height_mm / 1000, 3),
            "weight_kg": anatomy.weight_kg,
            "sex": anatomy.sex,
            "girth": _r(anatomy.girth),
            "arms_up": anatomy.arms_up,
        },
        "liver_suv_mean": {tp: _r(v, 3) for tp, v in liver_true.items()},
        "avid_threshold_suv": {tp: _r(v, 3) for tp, v in thr.items()},
        "mask_threshold_suv": {tp: _r(v, 3) for tp, v in mask_thr.items()},
        "physiology": {tp: {k: _r(v) for k, v in asdict(p).items()} for tp, p in phys.items()},
        "scans": {tp: {k: _r(v) for k, v in asdict(s).items()} for tp, (_, s) in scans.items()},
        "lesions": lesions,
        "mask_ids": {tp: sorted(p) for tp, p in parts.items()},
        "correspondence": [[i, i] for i in both],
        "new_lesion_ids": sc.new_ids,
        "flared_lesion_ids": sorted(i for i, c in sc.change.items() if c == "flare"),
        "nodule": nodule,
    }


# --------------------------------------------------------------------------------------------
# dataset writer
# --------------------------------------------------------------------------------------------


def _pair_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of pair ``index`` within a dataset of ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _assign_splits(patterns: Sequence[str], seed: int, fractions: dict[str, float]) -> list[str]:
    """Split by patient (one pair per patient), stratified by pattern, deterministic in ``seed``.

    Patients are ordered round-robin over the patterns (each pattern's patients shuffled);
    val takes the first ``round(n * f_val)`` of that order, test the next ``round(n * f_test)``
    (each at least one when its fraction is positive and n >= 3), train the rest, so every
    split sees the patterns as evenly as its size allows.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    n = len(patterns)
    groups = [
        list(rng.permutation([i for i, p in enumerate(patterns) if p == pat]))
        for pat in sorted(set(patterns))
    ]
    groups = [groups[int(i)] for i in rng.permutation(len(groups))]
    order = [int(g[k]) for k in range(max(map(len, groups))) for g in groups if k < len(g)]

    def count(name: str) -> int:
        frac = fractions.get(name, 0.0)
        k = int(math.floor(n * frac + 0.5))
        return max(k, 1) if frac > 0 and n >= 3 else k

    n_val = min(count("val"), n)
    n_test = min(count("test"), n - n_val)
    out = ["train"] * n
    for rank, i in enumerate(order):
        if rank < n_val:
            out[i] = "val"
        elif rank < n_val + n_test:
            out[i] = "test"
    return out


def _write_pair(job: tuple[Path, str, int, str, PhantomConfig]) -> dict[str, str]:
    """Generate one pair, write its autoPET studies and truth; return its manifest row."""
    root, patient_id, pair_seed, pattern, config = job
    baseline, followup, truth = generate_pair(pair_seed, pattern, config, patient_id=patient_id)
    row = {Keys.PATIENT_ID: patient_id, Keys.PATTERN: pattern}
    for tp, study in (("baseline", baseline), ("followup", followup)):
        folder = root / "autopet" / patient_id / tp
        save_nifti(study.pet, study.affine, folder / "SUV.nii.gz")
        assert study.ct is not None and study.mask is not None
        save_nifti(study.ct, study.affine, folder / "CTres.nii.gz")
        save_nifti(study.mask, study.affine, folder / "SEG.nii.gz")
        assert study.organs is not None
        save_nifti(study.organs, study.affine, folder / ORGANS_FILE)
        rel = Path("autopet") / patient_id / tp
        row[f"{tp}_pet"] = (rel / "SUV.nii.gz").as_posix()
        row[f"{tp}_ct"] = (rel / "CTres.nii.gz").as_posix()
        row[f"{tp}_mask"] = (rel / "SEG.nii.gz").as_posix()
        row[f"{tp}_organs"] = (rel / ORGANS_FILE).as_posix()
    atomic_write_text(root / TRUTH_DIR / f"{patient_id}.json", json.dumps(truth, indent=1))
    return row


def write_manifest(rows: Sequence[dict[str, str]], path: Path, overwrite: bool = False) -> Path:
    """Write the longitudinal manifest CSV (columns ``MANIFEST_COLUMNS``) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in MANIFEST_COLUMNS})
    return atomic_write_text(path, buf.getvalue(), overwrite=overwrite)


def generate_dataset(
    out_dir: str | Path,
    n_pairs: int,
    seed: int,
    *,
    config: PhantomConfig = PhantomConfig(),
    patterns: Sequence[str] | None = None,
    overwrite: bool = False,
    workers: int = 1,
    split_fractions: dict[str, float] | None = None,
    id_prefix: str = "PF",
) -> Path:
    """Write ``n_pairs`` phantom pairs as ``out_dir/autopet/<patient>/<study>/{SUV,CTres,SEG,
    ORGANS}.nii.gz``, their ground truth as ``out_dir/truth/<patient>.json`` and
    ``out_dir/manifest.csv`` (organ maps in its ``baseline_organs`` / ``followup_organs``).

    Args:
        out_dir: target folder; a non-empty one is refused unless ``overwrite`` (then replaced).
        n_pairs: number of patients (each a baseline + follow-up pair).
        seed: dataset seed; pair ``i`` uses a seed derived from ``(seed, i)``.
        config: phantom parameters.
        patterns: patterns to cycle through (default: all four, balanced).
        overwrite: replace an existing non-empty ``out_dir``.
        workers: processes to use (the result does not depend on it).
        split_fractions: train/val/test fractions (by patient, stratified by pattern).
        id_prefix: patient ids are ``<id_prefix><NNNN>`` (letters, digits, ``_`` or ``-``);
            distinct prefixes keep ids unique when several sets are read together.

    Returns:
        Path of the manifest (paths in it are relative to its folder).
    """
    out_dir = Path(out_dir)
    if n_pairs < 1:
        raise PetflareInputError(out_dir, f"n_pairs must be >= 1, got {n_pairs}")
    cycle = tuple(patterns) if patterns else PATTERNS
    bad = [p for p in cycle if p not in PATTERNS]
    if bad:
        raise PetflareInputError(None, f"unknown pattern(s) {bad}; expected some of {PATTERNS}")
    fractions = split_fractions or DEFAULT_SPLIT_FRACTIONS
    if set(fractions) - set(SPLITS):
        raise PetflareInputError(
            None, f"split names must be among {SPLITS}, got {sorted(fractions)}"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]+", id_prefix):
        raise PetflareInputError(
            None, f"id_prefix must be letters, digits, '_' or '-', got {id_prefix!r}"
        )
    pats = [cycle[i % len(cycle)] for i in range(n_pairs)]
    splits = _assign_splits(pats, seed, fractions)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        jobs = [
            (tmp, f"{id_prefix}{i:04d}", _pair_seed(seed, i), pats[i], config)
            for i in range(n_pairs)
        ]
        if workers > 1 and n_pairs > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                rows = list(pool.map(_write_pair, jobs))
        else:
            rows = [_write_pair(j) for j in jobs]
        for row, split in zip(rows, splits, strict=True):
            row[Keys.SPLIT] = split
        write_manifest(rows, tmp / "manifest.csv")
    return out_dir / "manifest.csv"
