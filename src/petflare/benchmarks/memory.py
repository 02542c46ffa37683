"""Peak memory of one single-scan run, the measurement behind the memory guard's constants.

``python -m petflare.benchmarks.memory NX NY NZ SX SY SZ [MODEL_DIR]`` builds a synthetic body
(an elliptic cylinder of SUV 1 filling 38 % of each slice, bounding box 48 %, with a hot cube) on
an ``NX x NY x NZ`` grid of ``SX x SY x SZ`` mm, runs :func:`petflare.inference.pipeline.run_single`
on the CPU and prints the resident memory before and the peak during the run. One grid per
process: the peak (``ru_maxrss``) never goes down. docs/inference.md ("Memory guard") lists the
runs that set :mod:`petflare.inference.memory`'s constants.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def measure(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], model_dir: Path
) -> dict[str, float]:
    """Resident memory (MB) before and at the peak of one ``run_single`` on a synthetic body."""
    from petflare.inference import pipeline
    from petflare.inference.predictor import Predictor
    from petflare.io.study import Study

    predictor = Predictor.from_folder(model_dir, device="cpu")
    nx, ny, nz = shape
    i, j, _ = np.ogrid[:nx, :ny, :nz]
    body = ((i - nx / 2) / (0.4 * nx)) ** 2 + ((j - ny / 2) / (0.3 * ny)) ** 2 <= 1
    rng = np.random.default_rng(0)
    pet = np.broadcast_to(body, shape).astype(np.float32)
    pet += 0.05 * rng.random(shape, dtype=np.float32)
    pet[nx // 2 - 3 : nx // 2 + 3, ny // 2 - 3 : ny // 2 + 3, nz // 2 - 3 : nz // 2 + 3] = 10.0
    study = Study(pet=pet, affine=np.diag([*spacing_mm, 1.0]))
    del pet
    before = _rss_mib()
    start = time.perf_counter()
    pipeline.run_single(study, predictor)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model_spacing = np.asarray(predictor.preprocessing.spacing_mm)
    n_input = float(np.prod(shape))
    return {
        "input_voxels_m": n_input / 1e6,
        "model_voxels_m": n_input * float(np.prod(np.asarray(spacing_mm) / model_spacing)) / 1e6,
        "rss_before_mib": before,
        "peak_mib": peak,
        "increase_mib": peak - before,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: ``NX NY NZ SX SY SZ [MODEL_DIR]`` (default models/phantom-unet)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (6, 7):
        raise SystemExit("usage: python -m petflare.benchmarks.memory NX NY NZ SX SY SZ [MODEL]")
    shape = (int(args[0]), int(args[1]), int(args[2]))
    spacing = (float(args[3]), float(args[4]), float(args[5]))
    model = Path(args[6]) if len(args) == 7 else Path("models/phantom-unet")
    result = measure(shape, spacing, model)
    print(
        f"grid {'x'.join(map(str, shape))} at {'x'.join(f'{s:g}' for s in spacing)} mm: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
