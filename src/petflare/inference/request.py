"""An inference request: a validated set of options, and running it end to end.

:func:`request_from_config` checks an option mapping (the ``petflare-infer`` command line, or a
plain dict) and builds a typed :class:`InferRequest`; :func:`run_request` reads and validates
every input, loads the model once and calls :mod:`petflare.inference.pipeline` and
:mod:`petflare.inference.writers`. ``petflare-infer`` and ``petflare-demo`` are thin wrappers.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from petflare.errors import PetflareInputError
from petflare.inference.results import ScanInput
from petflare.paths import models_dir

#: Who may run the model: ``auto`` picks CUDA when available.
DEVICES = ("auto", "cpu", "cuda")
#: Who calls the pattern: ``auto`` = the learned head when the model folder has one, else rules.
PATTERN_SOURCES = ("auto", "rules", "learned_head")
#: Follow-up to baseline alignment (petflare.quant.RegistrationConfig.modality).
REGISTRATIONS = ("auto", "ct", "pet", "none")

_PAIR_KEYS = (
    "baseline_pet",
    "baseline_ct",
    "baseline_weight_kg",
    "baseline_injected_dose_bq",
    "baseline_meta",
    "followup_pet",
    "followup_ct",
    "followup_weight_kg",
    "followup_injected_dose_bq",
    "followup_meta",
)
_SINGLE_KEYS = ("pet", "ct", "weight_kg", "injected_dose_bq", "meta")


@dataclass(frozen=True)
class InferRequest:
    """A validated command line: which mode, which inputs, where to write, which model."""

    mode: Literal["single", "pair", "batch"]
    out: Path
    model: Path
    device: str = "auto"
    tta: bool = False
    overwrite: bool = False
    html: bool = True
    dicom_seg: bool = True
    progress: bool = True
    scan: ScanInput | None = None
    baseline: ScanInput | None = None
    followup: ScanInput | None = None
    manifest: Path | None = None
    sw_batch_size: int | None = None
    min_component_ml: float | None = None
    threshold: float | None = None
    physiology_filter: bool | None = None
    pattern_source: str = "auto"
    registration: str = "auto"
    allow_implausible_suv: bool = False
    allow_patient_mismatch: bool = False
    swap_reversed_pair: bool = False
    memory_limit_gb: float | None = None
    ct_contrast: str = "unknown"


#: The model folder used when none is given. ``phantom-unet-gpu`` (the GPU-trained network and
#: its head) generalizes better than the CPU-reproducible ``phantom-unet`` on every phantom
#: variation measured (scanners, SUV calibration, texture, graded lesions) and on the real crops
#: and test-retest scan (docs/model_card.md, "Which folder is the default, and why").
DEFAULT_MODEL_NAME = "phantom-unet-gpu"


def default_model_dir() -> Path:
    """The default model folder, ``models/phantom-unet-gpu`` next to the ``configs/`` folder."""
    return models_dir() / DEFAULT_MODEL_NAME


def request_from_config(cfg: Mapping[str, Any]) -> InferRequest:
    """Check the option combination and build a typed request (no file is read or written).

    Raises:
        PetflareInputError: missing ``out``, no or several modes, half a pair, a bad device.
    """
    get = cfg.get
    if not get("out"):
        raise PetflareInputError(None, "out=DIR is required (the output folder)")
    given = {k for k in (*_PAIR_KEYS, *_SINGLE_KEYS, "manifest") if get(k) is not None}
    modes = []
    if "manifest" in given:
        modes.append("batch")
    if given & set(_PAIR_KEYS):
        modes.append("pair")
    if given & set(_SINGLE_KEYS):
        modes.append("single")
    if not modes:
        raise PetflareInputError(
            None,
            "no input: give baseline_pet=PATH followup_pet=PATH (pair), pet=PATH (single scan) "
            "or manifest=CSV (batch); see --help",
        )
    if len(modes) > 1:
        raise PetflareInputError(
            None,
            f"options of several modes were given ({', '.join(sorted(given))}): use either "
            "baseline_*/followup_* (pair), pet/ct (single scan) or manifest (batch)",
        )
    device = str(get("device") or "auto")
    if device not in DEVICES:
        raise PetflareInputError(None, f"device={device} is not one of {', '.join(DEVICES)}")
    pattern_source = str(get("pattern_source") or "auto")
    if pattern_source not in PATTERN_SOURCES:
        raise PetflareInputError(
            None, f"pattern_source={pattern_source} is not one of {', '.join(PATTERN_SOURCES)}"
        )
    from petflare.quant.criteria import CT_CONTRAST_CHOICES

    ct_contrast = str(get("ct_contrast") or "unknown")
    if ct_contrast not in CT_CONTRAST_CHOICES:
        raise PetflareInputError(
            None, f"ct_contrast={ct_contrast} is not one of {', '.join(CT_CONTRAST_CHOICES)}"
        )
    registration = str(get("registration") or "auto")
    if registration not in REGISTRATIONS:
        raise PetflareInputError(
            None, f"registration={registration} is not one of {', '.join(REGISTRATIONS)}"
        )
    threshold = _number(cfg, "threshold", float)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise PetflareInputError(None, f"threshold={threshold} must lie between 0 and 1")
    model = Path(str(get("model_dir"))) if get("model_dir") else default_model_dir()
    memory_limit_gb = _number(cfg, "memory_limit_gb", float)
    if memory_limit_gb is not None and not memory_limit_gb > 0:
        raise PetflareInputError(None, f"memory_limit_gb={memory_limit_gb} must be positive")
    common: dict[str, Any] = {
        "out": Path(str(get("out"))),
        "model": model,
        "device": device,
        "tta": bool(get("tta")),
        "overwrite": bool(get("overwrite")),
        "html": bool(get("html", True)),
        "dicom_seg": bool(get("dicom_seg", True)),
        "progress": bool(get("progress", True)),
        "sw_batch_size": _number(cfg, "sw_batch_size", int),
        "min_component_ml": _number(cfg, "min_component_ml", float),
        "threshold": threshold,
        "physiology_filter": None
        if get("physiology_filter") is None
        else bool(get("physiology_filter")),
        "pattern_source": pattern_source,
        "registration": registration,
        "ct_contrast": ct_contrast,
        "allow_implausible_suv": bool(get("allow_implausible_suv")),
        "allow_patient_mismatch": bool(get("allow_patient_mismatch")),
        "swap_reversed_pair": bool(get("swap_reversed_pair")),
        "memory_limit_gb": memory_limit_gb,
    }
    mode = modes[0]
    if mode == "batch":
        return InferRequest(mode="batch", manifest=Path(str(get("manifest"))), **common)
    if mode == "single":
        if get("pet") is None:
            raise PetflareInputError(None, "single-scan mode needs pet=PATH")
        return InferRequest(mode="single", scan=_scan(cfg, ""), **common)
    for name in ("baseline", "followup"):
        if get(f"{name}_pet") is None:
            raise PetflareInputError(
                None, f"pair mode needs both baseline_pet= and followup_pet= ({name}_pet missing)"
            )
    return InferRequest(
        mode="pair", baseline=_scan(cfg, "baseline_"), followup=_scan(cfg, "followup_"), **common
    )


def _scan(cfg: Mapping[str, Any], prefix: str) -> ScanInput:
    ct = cfg.get(f"{prefix}ct")
    return ScanInput(
        pet=Path(str(cfg.get(f"{prefix}pet"))),
        ct=None if ct is None else Path(str(ct)),
        weight_kg=_number(cfg, f"{prefix}weight_kg", float),
        injected_dose_bq=_number(cfg, f"{prefix}injected_dose_bq", float),
        meta=_meta(cfg, f"{prefix}meta"),
        allow_implausible_suv=bool(cfg.get("allow_implausible_suv")),
    )


def _meta(cfg: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """User-given scan metadata (a mapping, ``key={patient_id: P1, ...}`` on the command line)."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        try:  # an OmegaConf DictConfig
            from omegaconf import OmegaConf

            value = OmegaConf.to_container(value)  # type: ignore[arg-type]
        except (ImportError, ValueError):
            pass
    if not isinstance(value, Mapping):
        raise PetflareInputError(
            None,
            f"{key} must be a mapping, e.g. {key}='{{patient_id: P1, acquisition: "
            '"2024-01-10T09:30", tracer: FDG, uptake_min: 62}\'',
        )
    return {str(k): v for k, v in value.items()}


def _number(cfg: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    """An optional numeric option, or a one-line input error naming it."""
    value = cfg.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise PetflareInputError(None, f"{key}={value} is not a valid {kind.__name__}") from None


def check_inputs_exist(request: InferRequest) -> None:
    """Fail fast (before the model loads) on input paths that do not exist."""
    scans = [s for s in (request.scan, request.baseline, request.followup) if s is not None]
    for scan in scans:
        if not scan.pet.exists():
            raise PetflareInputError(scan.pet, "PET file or DICOM folder not found")
        if scan.ct is not None and not scan.ct.exists():
            raise PetflareInputError(scan.ct, "CT file not found")
    if request.manifest is not None and not request.manifest.is_file():
        raise PetflareInputError(request.manifest, "manifest not found")
    _check_model_dir(request.model)
    if request.pattern_source == "learned_head" and request.mode != "single":
        from petflare.inference.pattern import HEAD_METADATA_FILE

        if not (request.model / HEAD_METADATA_FILE).is_file():
            raise PetflareInputError(
                request.model / HEAD_METADATA_FILE,
                "pattern_source=learned_head, but this model folder has no change-pattern head",
            )


def _check_model_dir(model: Path) -> None:
    if not model.is_dir():
        shipped = model == default_model_dir()
        hint = (
            " (the default model: run `make weights-gpu` on a CUDA machine, or pass"
            " model=models/phantom-unet, which `make weights` retrains on a CPU)"
            if shipped
            else ""
        )
        raise PetflareInputError(model, f"model folder not found{hint}; pass model=DIR")


def check_output_dir(out: Path, overwrite: bool, mode: str = "single") -> None:
    """Refuse an output path that is a file, or a non-empty folder without ``overwrite``.

    In batch mode a previous batch's folder (it holds ``batch_summary.csv``) is continued: its
    finished rows are kept and the rest computed (``overwrite=true`` recomputes all).
    """
    from petflare.errors import OutputExistsError
    from petflare.inference.writers import BATCH_SUMMARY_CSV

    if out.exists() and not out.is_dir():
        raise OutputExistsError(out, "exists and is not a folder")
    if mode == "batch" and (out / BATCH_SUMMARY_CSV).is_file():
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(out, "exists and is not empty; pass overwrite=true to replace it")


def load_predictor(request: InferRequest) -> Any:
    """Load the segmentation model folder once (safe loading is the Predictor's job)."""
    from petflare.inference.predictor import Predictor

    _check_model_dir(request.model)
    kwargs: dict[str, Any] = {"device": request.device, "tta": request.tta}
    if request.sw_batch_size is not None:
        kwargs["sw_batch_size"] = request.sw_batch_size
    if request.min_component_ml is not None:
        kwargs["min_component_ml"] = request.min_component_ml
    if request.threshold is not None:
        kwargs["threshold"] = request.threshold
    if request.physiology_filter is not None:
        kwargs["physiology_filter"] = request.physiology_filter
    return Predictor.from_folder(request.model, **kwargs)


def load_pattern_head(request: InferRequest) -> Any:
    """The learned change-pattern head of the model folder, or None for the rules.

    ``auto`` uses the head when the folder has one (``head.json``); ``learned_head`` requires it;
    ``rules`` never loads it. Single-scan runs need no pattern.
    """
    if request.mode == "single" or request.pattern_source == "rules":
        return None
    from petflare.inference.pattern import HEAD_METADATA_FILE, PatternClassifier

    if request.pattern_source == "auto" and not (request.model / HEAD_METADATA_FILE).is_file():
        return None
    return PatternClassifier.from_folder(request.model, device=request.device)


def run_request(request: InferRequest, predictor: Any | None = None) -> list[Path]:
    """Run a request end to end and return the paths written.

    Every input is read and validated before the model is loaded, so bad input is reported
    in a second, not after the model has loaded.

    Args:
        request: the validated command line.
        predictor: an already loaded segmentation model; loaded from ``request.model`` if None.
    """
    from petflare.inference import pipeline, writers

    progress = pipeline.stderr_progress if request.progress else None
    if request.mode == "batch":
        from petflare.inference.batch import run_manifest
        from petflare.io import load_manifest

        assert request.manifest is not None
        rows = load_manifest(request.manifest)
        predictor = predictor if predictor is not None else _load(request, progress)
        items = run_manifest(
            rows,
            predictor,
            request.out,
            overwrite=request.overwrite,
            pattern_head=load_pattern_head(request),
            progress=progress,
            html=request.html,
            registration=_registration(request),
            dicom_seg=request.dicom_seg,
            ct_contrast=request.ct_contrast,
            allow_implausible_suv=request.allow_implausible_suv,
            allow_patient_mismatch=request.allow_patient_mismatch,
            swap_reversed_pair=request.swap_reversed_pair,
            memory_limit_gb=request.memory_limit_gb,
        )
        failed = [item for item in items if item.status == "failed"]
        if failed:
            first = failed[0]
            raise PetflareInputError(
                request.manifest,
                f"{len(failed)} of {len(items)} manifest rows failed (first: {first.folder}: "
                f"{first.reason}); the others are in {request.out}, every row's status and "
                "reason in batch_summary.csv. Fix the inputs and rerun: finished rows are kept",
            )
        return [request.out / item.folder for item in items]
    from petflare.inference.memory import check_memory

    scans = [s for s in (request.scan, request.baseline, request.followup) if s is not None]
    check_memory(  # from the headers, before any voxel is read
        [s.pet for s in scans],
        model_spacing_mm=model_spacing(request.model),
        limit_gb=request.memory_limit_gb,
    )
    if request.mode == "single":
        assert request.scan is not None
        scan = _read(request.scan, pipeline.SINGLE_TIMEPOINT, progress)
        predictor = predictor if predictor is not None else _load(request, progress)
        result = pipeline.run_single(scan, predictor, progress=progress)
    else:
        from petflare.io.pair_checks import check_pair

        assert request.baseline is not None and request.followup is not None
        baseline = _read(request.baseline, "baseline", progress)
        followup = _read(request.followup, "followup", progress)
        checks = check_pair(  # before the model loads: a wrong pair is refused in seconds
            baseline.study.meta,
            followup.study.meta,
            followup_path=request.followup.pet,
            allow_patient_mismatch=request.allow_patient_mismatch,
            swap_reversed_pair=request.swap_reversed_pair,
        )
        if checks.swapped:
            baseline, followup = followup, baseline
        for line in checks.warnings:
            print(f"petflare: warning: {line}", file=sys.stderr)
        predictor = predictor if predictor is not None else _load(request, progress)
        result = pipeline.run_pair(
            baseline,
            followup,
            predictor,
            pattern_head=load_pattern_head(request),
            progress=progress,
            registration=_registration(request),
            ct_contrast=request.ct_contrast,
            pair_checks=checks,
        )
    written = writers.write_outputs(
        result,
        request.out,
        overwrite=request.overwrite,
        html=request.html,
        dicom_seg=request.dicom_seg,
    )
    if result.pattern is not None:
        p = result.pattern
        how = f"p = {p.probability:.2f}" if p.probability is not None else f"rules, {p.rule}"
        print(f"petflare: pattern {p.label} ({how})", file=sys.stderr)
    return sorted(written.values())


def model_spacing(model: Path) -> tuple[float, float, float] | None:
    """The model grid's voxel size from the folder's metadata.json (None when unreadable)."""
    import json

    try:
        spacing = json.loads((model / "metadata.json").read_text(encoding="utf-8"))["spacing_mm"]
        return (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _registration(request: InferRequest) -> Any:
    from petflare.quant import RegistrationConfig

    return RegistrationConfig(modality=request.registration)


def _read(scan: ScanInput, name: str, progress: Any) -> Any:
    from petflare.inference.pipeline import load_scan

    if progress:
        progress(f"read_{name} {scan.pet}")
    return load_scan(scan, study_id=name)


def _load(request: InferRequest, progress: Any) -> Any:
    if progress:
        progress(f"loading model {request.model} (device={request.device})")
    return load_predictor(request)
