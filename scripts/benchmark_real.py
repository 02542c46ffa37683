"""Real FDG-PET benchmark: a model folder on scans from outside the phantom generator.

Scores the model (and the classical baselines SUV >= 2.5 and 41 % of SUVmax) on the real scans
in ``../shared/data/real``: STS_001 whole body (GTV), ACRIN-042 and CHUS-052 (annotated
physiology and known disease), the IBSI sarcoma crops, and a robustness battery. Writes the
markdown table and a JSON beside it. The library code is ``petflare.benchmarks.real``.

Usage::

    python scripts/benchmark_real.py --overwrite                      # default model folder
    python scripts/benchmark_real.py --model models/phantom-unet \\
        --out docs/reports/bench_real_cpu.md --overwrite
    python scripts/benchmark_real.py --make-annotations --overwrite   # rebuild annotations/real
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
from pathlib import Path

from petflare.benchmarks import real
from petflare.errors import PetflareInputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "phantom-unet-gpu"  # the default folder (cli/infer.py)
DEFAULT_DATA = REPO.parent / "shared" / "data" / "real"
DEFAULT_OUT = REPO / "docs" / "reports" / "bench_real.md"
#: Method name of the physiology-filtered variant (networks with an organ output only).
FILTERED = "model+physiology filter"


def _shown(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real-data folder")
    p.add_argument(
        "--annotations", type=Path, default=REPO / real.ANNOTATIONS_DIR, help="region maps"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (+ .json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the network")
    p.add_argument("--no-robustness", action="store_true", help="skip the perturbed scans")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown from the JSON beside --out (no scoring)",
    )
    p.add_argument(
        "--make-annotations", action="store_true", help="rebuild the region maps and stop"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.make_annotations:
            real.make_annotations(args.data, args.annotations, args.overwrite, say)
            return 0
        if args.render_only:
            print(f"wrote {real.rerender_report(args.out)}")
            return 0
        import torch

        from petflare.inference.predictor import Predictor

        if not args.overwrite and args.out.exists():
            raise PetflareInputError(args.out, "exists; pass --overwrite to replace it")
        torch.set_num_threads(args.threads)
        # The network's own mask, without the physiology filter even where the folder enables it.
        predictor = Predictor.from_folder(args.model, device="cpu", physiology_filter=False)
        segmenters = {"model": predictor.predict}
        descriptions = {"model": f"model folder {_shown(args.model)}, physiology filter off"}
        if predictor.organ_classes > 0:  # an anatomy-aware network: score its filter separately
            filtered = Predictor.from_folder(args.model, device="cpu", physiology_filter=True)
            segmenters[FILTERED] = filtered.predict
            descriptions[FILTERED] = "the same network with its physiological-uptake filter"
        bench = real.run_benchmark(
            args.data,
            args.annotations,
            segmenters,
            model_name=_shown(args.model),
            metadata=predictor.metadata,
            descriptions=descriptions,
            perturbations={} if args.no_robustness else None,
            progress=say,
        )
    except PetflareInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python scripts/benchmark_real.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    context = [
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} CPU, "
        f"{args.threads} threads, torch {torch.__version__}.",
    ]
    md, js = real.write_report(bench, args.out, command, args.overwrite, context)
    print(f"wrote {md} and {js} ({bench.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
