"""The demo as a library: one phantom pair per change pattern, inferred with one loaded model.

Synthesizes one phantom pair of each change pattern, runs the pair inference (segmentation,
quantification, criteria, pattern, outputs) on each with the model loaded once, and returns one
:class:`DemoRow` per pair; :func:`format_table` is what ``petflare-demo`` prints.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from petflare.constants import PATTERNS, Keys
from petflare.synth import PhantomConfig


@dataclass(frozen=True)
class DemoRow:
    """One demo pair's outcome."""

    patient_id: str
    true_pattern: str
    predicted_pattern: str
    probability: float | None
    source: str
    seconds: float
    html: Path


def run_demo(
    out: Path,
    seed: int,
    model: Path | None,
    device: str = "auto",
    workers: int = 1,
    overwrite: bool = True,
    phantom: PhantomConfig | None = None,
) -> list[DemoRow]:
    """Synthesize one pair per pattern under ``out/phantom`` and infer each into ``out/results``.

    Args:
        out: demo folder (phantom data and per-pair result folders).
        seed: phantom seed (the default model never trained on it when it differs from training).
        model: model folder; None means the default ``models/phantom-unet-gpu``.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: processes used to synthesize the phantom.
        overwrite: replace an earlier demo's outputs.
        phantom: phantom image-formation settings (default: the standard ~4 mm grid).
    """
    from petflare.inference.request import (
        InferRequest,
        default_model_dir,
        load_predictor,
        run_request,
    )
    from petflare.inference.results import ScanInput
    from petflare.synth import generate_dataset

    model = model or default_model_dir()
    print(f"petflare demo: synthesizing {len(PATTERNS)} phantom pairs (seed {seed})", flush=True)
    manifest = generate_dataset(
        out / "phantom",
        len(PATTERNS),
        seed,
        patterns=PATTERNS,
        overwrite=overwrite,
        workers=workers,
    )
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    base = manifest.parent

    def scan(row: dict[str, str], prefix: str) -> ScanInput:
        ct = row.get(f"{prefix}_ct") or None
        return ScanInput(pet=base / row[f"{prefix}_pet"], ct=None if ct is None else base / ct)

    results: list[DemoRow] = []
    predictor = None
    for row in rows:
        request = InferRequest(
            mode="pair",
            out=out / "results" / row[Keys.PATIENT_ID],
            model=model,
            device=device,
            overwrite=overwrite,
            baseline=scan(row, "baseline"),
            followup=scan(row, "followup"),
        )
        if predictor is None:
            predictor = load_predictor(request)
        start = time.perf_counter()
        run_request(request, predictor=predictor)
        seconds = time.perf_counter() - start
        report = json.loads((request.out / "report.json").read_text())
        pattern = report["pattern"]
        probs = pattern.get("probabilities")
        results.append(
            DemoRow(
                patient_id=row[Keys.PATIENT_ID],
                true_pattern=row[Keys.PATTERN],
                predicted_pattern=pattern["label"],
                probability=None if probs is None else float(probs[pattern["label"]]),
                source=pattern["source"],
                seconds=seconds,
                html=request.out / "report.html",
            )
        )
    return results


def format_table(rows: list[DemoRow]) -> str:
    """A plain-text table a user reads in the terminal."""
    header = (
        f"{'patient':<10} {'true pattern':<20} {'predicted':<20} {'prob':>5} {'by':<13} {'s':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        prob = "-" if r.probability is None else f"{r.probability:.2f}"
        lines.append(
            f"{r.patient_id:<10} {r.true_pattern:<20} {r.predicted_pattern:<20} {prob:>5} "
            f"{r.source:<13} {r.seconds:>6.1f}"
        )
    lines.append("")
    lines.append("HTML reports (open in a browser):")
    lines.extend(f"  {r.html}" for r in rows)
    return "\n".join(lines)
