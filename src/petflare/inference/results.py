"""What an inference run produces, before it is written: the typed results and their JSON.

:mod:`petflare.inference.pipeline` computes these and :mod:`petflare.inference.writers` /
:mod:`petflare.inference.status_figures` write them; all three import this module, and none of
them imports another for its types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

import petflare
from petflare.constants import PATTERNS
from petflare.io.study import Study

#: Shown in report.json, report.html and the CLI: what the outputs may and may not be used for.
RESEARCH_NOTICE = (
    "Research use only; trained on synthetic phantoms unless stated otherwise. "
    "Not a medical device: do not use for diagnosis or treatment decisions."
)

#: Version of the top-level layout of report.json written by the inference product (the
#: quantitative sections inside follow petflare.quant's own ``schema_version``).
INFERENCE_SCHEMA_VERSION = "1.0"

#: Timepoint name used for single-scan runs.
SINGLE_TIMEPOINT = "scan"

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ScanInput:
    """Where one PET scan lives and how to read it as SUV.

    Attributes:
        pet: NIfTI file in SUV (or Bq/mL with weight and dose) or a DICOM PET series folder.
        ct: optional CT NIfTI (Hounsfield units), any grid overlapping the PET.
        weight_kg: body weight, only to convert a Bq/mL NIfTI to SUVbw.
        injected_dose_bq: injected activity decay-corrected to scan start, only with weight_kg.
        meta: metadata the user gives for the pair checks (keys of
            :data:`petflare.io.pair_checks.USER_META_KEYS`); a DICOM header's own values win.
        allow_implausible_suv: skip the SUV plausibility checks (petflare.io.validation).
    """

    pet: Path
    ct: Path | None = None
    weight_kg: float | None = None
    injected_dose_bq: float | None = None
    meta: Mapping[str, Any] | None = field(default=None, compare=False)
    allow_implausible_suv: bool = False

    @property
    def is_dicom(self) -> bool:
        """True when ``pet`` is a folder (a DICOM series) rather than a NIfTI file."""
        return Path(self.pet).is_dir()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description for the report's ``inputs`` section."""
        return {
            "pet": str(self.pet),
            "ct": None if self.ct is None else str(self.ct),
            "format": "dicom" if self.is_dicom else "nifti",
            "weight_kg": self.weight_kg,
            "injected_dose_bq": self.injected_dose_bq,
            "given_meta": None if self.meta is None else dict(self.meta),
            "allow_implausible_suv": self.allow_implausible_suv,
        }


@dataclass
class LoadedScan:
    """A scan already read and validated, with where it came from and how long reading took."""

    study: Study
    source: ScanInput
    read_s: float = 0.0


class StageTimer:
    """Wall-clock seconds per named stage, reported through a progress callback as it goes."""

    def __init__(self, progress: ProgressFn | None = None, prefix: str = "") -> None:
        self.progress = progress
        self.prefix = prefix
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name`` (times add up if a name repeats)."""
        if self.progress is not None:
            self.progress(f"{self.prefix}{name} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed_s = time.perf_counter() - start
            self.timings_s[name] = self.timings_s.get(name, 0.0) + elapsed_s
            if self.progress is not None:
                self.progress(f"{self.prefix}{name} done in {elapsed_s:.2f} s")

    def add(self, name: str, seconds: float) -> None:
        """Record a stage measured elsewhere (e.g. in the batch read-ahead thread)."""
        self.timings_s[name] = self.timings_s.get(name, 0.0) + float(seconds)


@dataclass
class PatternCall:
    """The change pattern of a pair and who decided it.

    ``probabilities`` is only ever set by a calibrated model (``source == "learned_head"``);
    the rule-based classifier gives a label, the rule that fired and its evidence, no numbers
    dressed up as probabilities.
    """

    label: str
    source: Literal["rules", "learned_head"]
    probabilities: dict[str, float] | None = None
    rule: str | None = None
    evidence: Any = None

    def __post_init__(self) -> None:
        if self.label not in PATTERNS:
            raise ValueError(f"unknown pattern {self.label!r}; expected one of {PATTERNS}")
        if self.source == "rules" and self.probabilities is not None:
            raise ValueError("rule-based pattern calls carry no probabilities")
        if self.probabilities is not None and set(self.probabilities) != set(PATTERNS):
            raise ValueError(f"probabilities must cover exactly {PATTERNS}")

    @property
    def probability(self) -> float | None:
        """Probability of the chosen label, or None for a rule-based call."""
        return None if self.probabilities is None else float(self.probabilities[self.label])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the report's ``pattern`` section)."""
        return {
            "label": self.label,
            "source": self.source,
            "probabilities": None
            if self.probabilities is None
            else {k: float(self.probabilities[k]) for k in PATTERNS},
            "rule": self.rule,
            "evidence": jsonable(self.evidence),
        }


@dataclass
class TimepointResult:
    """One segmented and quantified scan."""

    name: str
    study: Study
    instances: np.ndarray
    scan_report: Any
    source: ScanInput | None = None

    @property
    def lesion_ids(self) -> list[int]:
        """Instance ids present in the mask, ascending."""
        ids = np.unique(self.instances)
        return [int(i) for i in ids if i != 0]


#: A learned pattern classifier: (baseline, followup, pair report) -> PatternCall.
PatternHead = Callable[[TimepointResult, TimepointResult, Any], PatternCall]


@dataclass
class InferenceResult:
    """Everything one run produced, before it is written (see petflare.inference.writers)."""

    timepoints: dict[str, TimepointResult]
    model: dict[str, Any]
    timer: StageTimer
    pair_report: Any = None
    pattern: PatternCall | None = None
    patient_id: str = ""
    #: pair only: what petflare.io.pair_checks found (identity, order, tracer, uptake times)
    pair_checks: Any = None

    @property
    def is_pair(self) -> bool:
        """True for a baseline/follow-up run."""
        return self.pair_report is not None

    @property
    def timings_s(self) -> dict[str, float]:
        """Seconds per stage so far (the writers add theirs before report.json is written)."""
        return dict(self.timer.timings_s)

    def report(self) -> dict[str, Any]:
        """The report.json content: quantitative report plus pattern, model, inputs, timings.

        The quantitative part (timepoints, matching, criteria, liver reference) is petflare.quant's
        own JSON (``quant_schema_version``); this function adds the inference sections around it.
        """
        if self.is_pair:
            quant = report_json(self.pair_report)
            # PairReport keeps the scans at its top level; report.json groups them by timepoint.
            quant["timepoints"] = {name: quant.pop(name) for name in ("baseline", "followup")}
        else:
            tp = self.timepoints[SINGLE_TIMEPOINT]
            scan = report_json(tp.scan_report)
            quant = {"schema_version": scan.get("schema_version"), "timepoints": {tp.name: scan}}
        out: dict[str, Any] = {
            "schema_version": INFERENCE_SCHEMA_VERSION,
            "quant_schema_version": quant.pop("schema_version", None),
            "mode": "pair" if self.is_pair else "single",
            "patient_id": self.patient_id,
            "notice": RESEARCH_NOTICE,
            "pattern": None if self.pattern is None else self.pattern.to_dict(),
        }
        out.update(quant)
        if self.is_pair and self.pattern is not None and hasattr(self.pair_report, "percist"):
            from petflare.quant.criteria import criteria_vs_pattern

            # which lesions drive a criterion that disagrees with the pattern (docs/report.md)
            out["criteria_evidence"] = criteria_vs_pattern(self.pair_report, self.pattern.label)
        out["masks"] = {
            name: {
                "file": mask_filename(name, self.is_pair),
                "lesion_ids": tp.lesion_ids,
                "shape": list(tp.study.shape),
                "spacing_mm": [round(s, 6) for s in tp.study.spacing_mm],
                "orientation": tp.study.orientation,
            }
            for name, tp in self.timepoints.items()
        }
        out["inputs"] = {
            name: None if tp.source is None else {**tp.source.to_dict(), **_conversion(tp.study)}
            for name, tp in self.timepoints.items()
        }
        if self.pair_checks is not None:
            out["pair_checks"] = jsonable(self.pair_checks.to_dict())
        out["model"] = self.model
        out["software"] = {"petflare": petflare.__version__}
        out["timings_s"] = {k: round(v, 4) for k, v in self.timer.timings_s.items()}
        return out


def mask_filename(timepoint: str, is_pair: bool) -> str:
    """Output file name of a timepoint's instance mask."""
    return f"{timepoint}_lesions.nii.gz" if is_pair else "lesions.nii.gz"


@dataclass
class BatchItem:
    """One manifest row's outcome in batch mode."""

    patient_id: str
    folder: str
    true_pattern: str | None
    pattern: PatternCall | None
    n_lesions: dict[str, int]
    seconds: float
    timings_s: dict[str, float] = field(default_factory=dict)
    #: ``done`` (computed now), ``done_earlier`` (a finished folder kept on a rerun) or
    #: ``failed`` (bad input: ``reason`` says why; no folder written)
    status: str = "done"
    reason: str = ""


def report_json(report: Any) -> dict[str, Any]:
    """A quant report object as a plain dict (via its ``to_json()``)."""
    import json

    if isinstance(report, dict):
        return dict(report)
    if hasattr(report, "to_dict"):
        return dict(report.to_dict())
    return dict(json.loads(report.to_json()))


def jsonable(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays, dataclasses and paths to JSON types."""
    import dataclasses

    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return jsonable(value.to_dict())
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return str(value)


#: Provenance of a DICOM conversion (and of the SUL factor) copied into report.json's inputs.
CONVERSION_KEYS = (
    "series_instance_uid",
    "series_description",
    "series_selection",
    "manufacturer",
    "units_in_file",
    "suv_route",
    "suv_conversion",
    "suv_route_check",
    "suv_scale_factor",
    "suv_reference_time",
    "scan_start_rule",
    "scan_start_note",
    "sul",
    "sul_factor",
)


def _conversion(study: Study) -> dict[str, Any]:
    """``{"conversion": {...}}`` with the study's conversion provenance, or {} when it has none."""
    source = study.meta.source or {}
    found = {key: source[key] for key in CONVERSION_KEYS if key in source}
    return {"conversion": found} if found else {}
