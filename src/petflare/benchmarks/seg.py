"""Segmentation benchmark: shipped model vs classical baselines, real tumour crops, CPU speed.

Writes docs/reports/bench_seg.md (numbers plus the exact command) and the full per-scan evaluations
(metrics.json / metrics.md) under the output folder. Parts:

1. a held-out phantom test set (a seed never used for training) generated with
   ``petflare.synth.generate_dataset``; the model folder and the two classical baselines are
   scored with the autoPET metrics (``petflare.inference.evaluation.evaluate_entries``);
2. the real FDG-PET soft-tissue-sarcoma crops (IBSI, TCIA STS) with their GTV masks: Dice of the
   model beside the baselines;
3. the real whole-body FDG-PET DICOM series of the same collection (STS_001: 267 slices,
   Bq/mL converted to SUV by ``read_dicom_pet``) with its RTSTRUCT ``GTV_Mass``: Dice, and the
   false-positive volume that physiological uptake (heart, bladder, brain) costs on a real body;
4. speed on a few CPU threads: seconds per whole-body scan and peak memory (each measured in a
   fresh process) of ``Predictor.predict`` against MONAI's plain ``sliding_window_inference``
   (default overlap 0.25 and constant blending) on the same network and preprocessed volume.

Without a model folder, parts 1-3 score the baselines only and part 4 is skipped.

Usage::

    python scripts/benchmark_seg.py --overwrite
    python scripts/benchmark_seg.py --n-pairs 2 --skip-speed --report /tmp/b.md  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from petflare.errors import PetflareInputError
from petflare.inference.baselines import CLASSICAL_BASELINES
from petflare.inference.evaluation import (
    Evaluation,
    dataset_entries,
    evaluate_entries,
    format_metric,
    summary_markdown_table,
    write_evaluation,
)
from petflare.io import atomic_write_text, check_can_write, load_study, study_entry
from petflare.paths import project_dir

REPO = project_dir()
DEFAULT_MODEL = REPO / "models" / "phantom-unet"
DEFAULT_REAL = REPO.parent / "shared" / "data" / "real" / "ibsi_sts_crops"
DEFAULT_WHOLEBODY = REPO.parent / "shared" / "data" / "real" / "sts001_wholebody_fdg_dicom"
#: RTSTRUCT ROI scored on the whole-body series (the sarcoma; ``GTV_Edema`` is not tumour).
WHOLEBODY_ROI = "GTV_Mass"
DEFAULT_OUT = REPO / "outputs" / "bench_seg"
DEFAULT_REPORT = REPO / "docs" / "reports" / "bench_seg.md"
#: Seed of the held-out phantom test set; refused if the model's metadata lists it as a
#: training seed.
HELD_OUT_SEED = 90_210_731
#: Issue targets on the phantom test set.
TARGET_DICE = 0.85
TARGET_SENSITIVITY_LARGE = 0.90
TARGET_SECONDS_PER_SCAN = 30.0


# --------------------------------------------------------------------------- helpers


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (portable report), else absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss where /proc is absent)."""
    status = _proc_status_mb()
    if "VmHWM" in status:
        return status["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_status_mb() -> dict[str, float]:
    """Memory lines of /proc/self/status in MB (empty off Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = float(value.split()[0]) / 1024.0
    return out


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux clear_refs '5'), so that the next peak
    reading covers only what follows (inference, not imports and loading)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _training_seeds(metadata: Any) -> set[int]:
    """Every integer stored under a key containing 'seed' in the model metadata."""
    seeds: set[int] = set()
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if "seed" in str(key).lower():
                values = value if isinstance(value, list) else [value]
                seeds.update(int(v) for v in values if isinstance(v, int))
            seeds |= _training_seeds(value)
    elif isinstance(metadata, list):
        for value in metadata:
            seeds |= _training_seeds(value)
    return seeds


def _load_predictor(
    model_dir: Path, threads: int, tta: bool = False, threshold: float | None = None
) -> Any:
    import torch

    from petflare.inference.predictor import Predictor

    torch.set_num_threads(threads)
    return Predictor.from_folder(model_dir, device="cpu", tta=tta, threshold=threshold)


# --------------------------------------------------------------------------- parts 1 and 2


def phantom_evaluation(args: argparse.Namespace, predictor: Any | None) -> Evaluation:
    """Generate the held-out phantom set and score the model and baselines on every scan."""
    if args.phantom_dataset is not None:
        manifest = args.phantom_dataset
        print(f"using the existing test set {manifest}", flush=True)
    else:
        from petflare.synth import generate_dataset

        data_dir = args.out_dir / "phantom_test"
        print(f"generating {args.n_pairs} phantom pairs (seed {args.seed}) in {data_dir}")
        start = time.perf_counter()
        manifest = generate_dataset(data_dir, args.n_pairs, args.seed, overwrite=True)
        print(f"  generated in {time.perf_counter() - start:.0f} s", flush=True)
    entries, _ = dataset_entries(manifest)
    if args.suv_scale != 1.0:
        entries = _suv_scaled(entries, args.suv_scale, args.out_dir / "phantom_suv_scaled")
    segmenters = {} if predictor is None else {"model": predictor.predict}
    evaluation = evaluate_entries(
        entries,
        segmenters=segmenters,
        baselines=list(CLASSICAL_BASELINES),
        load_ct=predictor is not None and "ct" in predictor.preprocessing.channels,
        method_descriptions={"model": f"model folder {args.model}"},
    )
    write_evaluation(
        evaluation,
        args.out_dir / "phantom_eval",
        overwrite=True,
        provenance={"dataset": str(manifest), "seed": args.seed, "suv_scale": args.suv_scale},
    )
    return evaluation


def _suv_scaled(entries: list[dict[str, Any]], factor: float, folder: Path) -> list[dict[str, Any]]:
    """Copies of the entries' PET with every SUV times ``factor``; labels and CT stay."""
    import nibabel as nib
    import numpy as np

    from petflare.constants import Keys
    from petflare.io.nifti import save_nifti

    print(f"writing the scans with SUV x {factor:g} to {folder}", flush=True)
    out = []
    for entry in entries:
        img: Any = nib.load(entry[Keys.PET])
        pet = np.asarray(img.dataobj, dtype=np.float32) * np.float32(factor)
        path = folder / f"{entry['case']}_SUV.nii.gz"
        save_nifti(pet, img.affine, path, overwrite=True, dtype=np.float32)
        out.append({**entry, Keys.PET: str(path)})
    return out


def real_entries(real_dir: Path) -> list[dict[str, Any]]:
    """Datalist of the IBSI STS crops: ``STS_XXX/PET_image.nii.gz`` (SUV) + ``PET_mask``."""
    entries = []
    for case_dir in sorted(real_dir.glob("STS_*")):
        pet, mask = case_dir / "PET_image.nii.gz", case_dir / "PET_mask.nii.gz"
        if pet.is_file() and mask.is_file():
            entry = study_entry(case_dir.name, "crop", pet, None, mask)
            entries.append({**entry, "case": case_dir.name})
    return entries


def _score_real(
    args: argparse.Namespace,
    predictor: Any | None,
    entries: list[dict[str, Any]],
    name: str,
    provenance: dict[str, Any],
    what: str,
) -> Evaluation:
    """Score the model (PET-only models; real data here has no CT) and the baselines."""
    segmenters = {} if predictor is None else {"model": predictor.predict}
    if predictor is not None and "ct" in predictor.preprocessing.channels:
        print(f"model needs CT, {what} have none; scoring baselines only", flush=True)
        segmenters = {}
    evaluation = evaluate_entries(
        entries,
        segmenters=segmenters,
        baselines=list(CLASSICAL_BASELINES),
        method_descriptions={"model": f"model folder {args.model}"},
    )
    write_evaluation(evaluation, args.out_dir / name, overwrite=True, provenance=provenance)
    return evaluation


def real_evaluation(args: argparse.Namespace, predictor: Any | None) -> Evaluation | None:
    """Score the model and baselines on the real sarcoma crops (None if the data is absent)."""
    entries = real_entries(args.real_dir)
    if not entries:
        print(f"real crops not found in {args.real_dir}; skipping", flush=True)
        return None
    provenance = {"dataset": str(args.real_dir)}
    return _score_real(args, predictor, entries, "real_eval", provenance, "the real crops")


def wholebody_evaluation(args: argparse.Namespace, predictor: Any | None) -> Evaluation | None:
    """Score the model and baselines on the real whole-body DICOM series (None if absent).

    The series is converted once (SUV and the ROI's mask as NIfTI under the output folder),
    then scored like any labelled scan: one tumour, so Dice, FNV and above all FPV (every
    physiologically hot organ the model calls lesion) are the numbers to read.
    """
    from petflare.io.dicom import read_dicom_pet, read_rtstruct_mask
    from petflare.io.nifti import save_nifti

    image, rtstructs = args.wholebody_dir / "image", sorted(args.wholebody_dir.glob("mask/*.dcm"))
    if not image.is_dir() or not rtstructs:
        print(f"whole-body series not found in {args.wholebody_dir}; skipping", flush=True)
        return None
    study = read_dicom_pet(image)
    mask = read_rtstruct_mask(rtstructs[0], study, WHOLEBODY_ROI)
    folder = args.out_dir / "wholebody_nifti"
    pet_path, mask_path = folder / "SUV.nii.gz", folder / "GTV.nii.gz"
    save_nifti(study.pet.astype("float32"), study.affine, pet_path, overwrite=True)
    save_nifti(mask.astype("uint8"), study.affine, mask_path, overwrite=True)
    entries = [
        {**study_entry("STS_001", "wholebody", pet_path, None, mask_path), "case": "STS_001"}
    ]
    provenance = {"dataset": str(args.wholebody_dir), "roi": WHOLEBODY_ROI}
    return _score_real(args, predictor, entries, "wholebody_eval", provenance, "the series' scans")


# --------------------------------------------------------------------------- part 4: speed


def speed_worker(
    mode: str, model_dir: Path, pet_path: Path, threads: int, repeats: int = 3
) -> dict[str, Any]:
    """Time one whole-body inference in this (fresh) process; print and return the numbers.

    ``mode`` is ``predictor`` (``Predictor.predict``: preprocessing, Gaussian sliding window,
    resampling back to the input grid, post-processing) or ``monai`` (MONAI's
    ``sliding_window_inference`` with its defaults on the same network and the same
    preprocessed volume; only the network pass is timed).
    """
    import torch
    from monai.inferers import sliding_window_inference

    from petflare.constants import Keys

    predictor = _load_predictor(model_dir, threads)
    channels = tuple(predictor.preprocessing.channels)
    ct_path = pet_path.parent / "CTres.nii.gz"  # autoPET layout written by generate_dataset
    study = load_study(pet_path, ct_path if Keys.CT in channels else None)
    rss_loaded = _peak_rss_mb()
    roi = tuple(int(s) for s in predictor.inference.roi_size_vox)
    result: dict[str, Any] = {
        "mode": mode,
        "threads": threads,
        "input_shape": list(study.shape),
        "input_spacing_mm": [round(s, 3) for s in study.spacing_mm],
        "roi_size_vox": list(roi),
        "rss_after_load_mb": rss_loaded,
    }
    n_channels = len(channels)
    # One untimed warm-up on a single window so both modes pay the same one-off costs.
    with torch.no_grad():
        predictor.net(torch.zeros((1, n_channels, *roi)))
    result["rss_before_inference_mb"] = _proc_status_mb().get("VmRSS", float("nan"))
    result["peak_reset"] = _reset_peak_rss()
    result["load_average_1min_before"] = os.getloadavg()[0]
    if mode == "predictor":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mask = predictor.predict(study)
            times.append(time.perf_counter() - start)
        result["n_lesion_voxels"] = int(mask.sum())
    else:
        # The same preprocessed volume the Predictor feeds its network (untimed).
        image = predictor.preprocess(study)[None].as_tensor()
        result["model_grid_shape"] = list(image.shape[2:])
        result["rss_before_inference_mb"] = _proc_status_mb().get("VmRSS", float("nan"))
        result["peak_reset"] = _reset_peak_rss()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                # MONAI defaults (overlap 0.25, constant blending); sw_batch_size as the Predictor.
                logits = sliding_window_inference(image, roi, 2, predictor.net)
            times.append(time.perf_counter() - start)
        assert isinstance(logits, torch.Tensor)
        result["n_lesion_voxels_model_grid"] = int((logits.argmax(1) == 1).sum())
    # The fastest repeat is the least disturbed by other jobs on a shared machine.
    result["seconds"] = min(times)
    result["seconds_all"] = times
    result["peak_rss_mb"] = _peak_rss_mb()
    result["load_average_1min_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    return result


def speed_benchmark(args: argparse.Namespace, pet_path: Path) -> list[dict[str, Any]]:
    """Run each speed mode in a fresh subprocess (clean peak-memory reading)."""
    results = []
    for mode in ("predictor", "monai"):
        cmd = [
            sys.executable,
            "-m",
            "petflare.benchmarks.seg",
            "--speed-worker",
            mode,
            "--model",
            str(args.model),
            "--speed-pet",
            str(pet_path),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"speed worker {mode} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {mode}: {results[-1]['seconds']:.1f} s", flush=True)
    return results


# --------------------------------------------------------------------------- report


def _targets(evaluation: Evaluation) -> list[str]:
    s = evaluation.summary
    if "model" not in s:
        return ["- model folder not found: targets not assessed."]
    m = s["model"]
    base = [s[b] for b in CLASSICAL_BASELINES]

    def ok(flag: bool) -> str:
        return "met" if flag else "NOT met"

    dice, sens = m["mean_dice"], m["sensitivity_large"]

    def lower(key: str) -> bool:  # strictly lower, or both zero (nothing left to improve)
        return all(m[key] < b[key] or m[key] == b[key] == 0.0 for b in base)

    fpv_ok, fnv_ok = lower("mean_fpv_ml"), lower("mean_fnv_ml")
    return [
        f"- mean per-scan Dice >= {TARGET_DICE}: {format_metric(dice)} ({ok(dice >= TARGET_DICE)})",
        f"- sensitivity for lesions >= 2 cm >= {TARGET_SENSITIVITY_LARGE}: {format_metric(sens)} "
        f"({ok(sens >= TARGET_SENSITIVITY_LARGE)})",
        f"- FPV below both baselines: {ok(fpv_ok)}",
        f"- FNV below both baselines: {ok(fnv_ok)}",
    ]


def _real_table(evaluation: Evaluation) -> list[str]:
    names = list(evaluation.methods)
    lines = [
        "| case | GTV (ml) | " + " | ".join(f"Dice {n}" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for c in evaluation.cases:
        gtv = next(iter(c.metrics.values())).gt_volume_ml
        dices = [format_metric(c.metrics[n].dice) for n in names]
        lines.append(f"| {c.case} | {gtv:.1f} | " + " | ".join(dices) + " |")
    means = [format_metric(evaluation.summary[n]["mean_dice"]) for n in names]
    lines.append("| **mean** | | " + " | ".join(means) + " |")
    return lines


def _wholebody_table(evaluation: Evaluation) -> list[str]:
    case = evaluation.cases[0]
    lines = ["| method | Dice | FPV (ml) | FNV (ml) |", "|---|---|---|---|"]
    for name, m in case.metrics.items():
        lines.append(
            f"| {name} | {format_metric(m.dice)} | {format_metric(m.fpv_ml, 1)} | "
            f"{format_metric(m.fnv_ml, 1)} |"
        )
    return lines


def _speed_table(results: list[dict[str, Any]]) -> list[str]:
    first = results[0]
    grid = next((r["model_grid_shape"] for r in results if "model_grid_shape" in r), "?")
    peak_what = (
        "the peak resident set during inference (kernel counter reset just before it), "
        "Python, torch and the loaded model included"
        if all(r.get("peak_reset") for r in results)
        else "the peak resident set of a fresh process, imports and loading included"
    )
    loads = [
        r.get(k, float("nan"))
        for r in results
        for k in ("load_average_1min_before", "load_average_1min_after")
    ]
    lines = [
        f"Volume: phantom whole-body scan {first['input_shape']} voxels at "
        f"{first['input_spacing_mm']} mm, {grid} at the model spacing (body crop); "
        f"window {first['roi_size_vox']}; {first['threads']} torch threads, each method in a "
        f"fresh process after one warm-up window; seconds are the fastest of "
        f"{len(first.get('seconds_all', [0]))} runs. Memory is {peak_what}.",
        "",
        f"The machine's 1-minute load average during these runs was {min(loads):.1f} to "
        f"{max(loads):.1f} on {os.cpu_count()} cores: other jobs shared the CPUs, so the times "
        "are upper bounds of what 2 free cores achieve.",
        "",
        "| method | seconds per scan | peak memory (MB) | of which inference (MB) |",
        "|---|---|---|---|",
    ]
    names = {
        "predictor": "petflare `Predictor.predict` (preprocess, Gaussian window, resample "
        "back, post-process)",
        "monai": "MONAI `sliding_window_inference`, defaults (overlap 0.25, constant), "
        "network only",
    }
    for r in results:
        extra = r["peak_rss_mb"] - r.get("rss_before_inference_mb", float("nan"))
        lines.append(
            f"| {names[r['mode']]} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{format_metric(extra, 0)} |"
        )
    pred = next(r for r in results if r["mode"] == "predictor")
    verdict = "met" if pred["seconds"] < TARGET_SECONDS_PER_SCAN else "NOT met"
    lines += ["", f"Target < {TARGET_SECONDS_PER_SCAN:.0f} s per scan on 2 CPU cores: {verdict}."]
    return lines


def write_report(
    args: argparse.Namespace,
    command: str,
    phantom: Evaluation,
    real: Evaluation | None,
    speed: list[dict[str, Any]] | None,
    elapsed_s: float,
    wholebody: Evaluation | None = None,
) -> Path:
    """Write docs/reports/bench_seg.md atomically."""
    import torch

    lines = [
        "# Segmentation benchmark",
        "",
        "Generated by `scripts/benchmark_seg.py`; numbers below are measured, not copied.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs visible, {args.threads} torch "
        f"threads; Python {platform.python_version()}, torch {torch.__version__}. "
        f"Total run time {elapsed_s / 60:.1f} min.",
        f"Model folder: `{_shown(args.model)}` "
        f"({'found' if 'model' in phantom.methods else 'absent'})"
        + ("; masks with flip test-time augmentation (8 flips averaged)" if args.tta else "")
        + (f"; lesion probability cut {args.threshold}" if args.threshold is not None else "")
        + ".",
        "",
        "## Held-out phantom test set",
        "",
        (
            f"{args.n_pairs} longitudinal pairs = {len(phantom.cases)} scans, seed {args.seed} "
            "(never used for training), generated by `petflare.synth.generate_dataset`."
            if args.phantom_dataset is None
            else f"{len(phantom.cases)} scans of `{args.phantom_dataset}`."
        )
        + (
            f" Every SUV multiplied by {args.suv_scale:g} (masks unchanged)."
            if args.suv_scale != 1.0
            else ""
        )
        + " autoPET metrics, 18-connectivity: mean Dice and FNV over scans with lesions, FPV "
        "over all scans, detection pooled over lesions; lesion size = equivalent-sphere "
        "diameter.",
        "",
        summary_markdown_table(phantom),
        "",
        "Targets (issue 3):",
        *_targets(phantom),
        "",
        f"Per-scan results: `{_shown(args.out_dir / 'phantom_eval' / 'metrics.md')}` "
        "(written by the run, not committed).",
        "",
        "## Real FDG-PET: soft-tissue sarcoma crops",
        "",
    ]
    if real is None:
        lines.append(f"Skipped: `{args.real_dir}` not found.")
    else:
        lines += [
            "Five IBSI crops (TCIA Soft-tissue-Sarcoma, CC BY 3.0; PET in SUV, 5 cm around the "
            "tumour, `GTV_Mass`). The crops hold one tumour each, so Dice is the meaningful "
            "number; the gap between phantom and real Dice measures how realistic the phantom "
            "is.",
            "",
            *_real_table(real),
        ]
    lines += ["", "## Real FDG-PET: whole-body DICOM series", ""]
    if wholebody is None:
        lines.append(f"Skipped: `{args.wholebody_dir}` not found.")
    else:
        gtv = next(iter(wholebody.cases[0].metrics.values())).gt_volume_ml
        lines += [
            f"STS_001 pre-treatment whole-body FDG-PET (TCIA Soft-tissue-Sarcoma, CC BY 3.0; "
            f"DICOM in Bq/mL read by `read_dicom_pet`, SUV from its header), RTSTRUCT "
            f"`{WHOLEBODY_ROI}` ({gtv:.0f} ml) as the only lesion. FPV counts every predicted "
            "component that misses the sarcoma: on a real body mostly physiological uptake.",
            "",
            *_wholebody_table(wholebody),
        ]
    lines += ["", "## Speed on CPU", ""]
    if speed is None:
        lines.append("Skipped (no model folder, or `--skip-speed`).")
    else:
        lines += _speed_table(speed)
    text = "\n".join(lines) + "\n"
    return atomic_write_text(args.report, text, overwrite=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="model folder (default models/phantom-unet, the CPU-reproducible folder of "
        "docs/reports/bench_seg.md; inference defaults to models/phantom-unet-gpu, "
        "docs/reports/bench_seg_gpu.md)",
    )
    parser.add_argument("--n-pairs", type=int, default=10, help="phantom pairs (2 scans each)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out phantom seed")
    parser.add_argument(
        "--phantom-dataset",
        type=Path,
        help="score this existing labelled dataset (any evaluate layout) instead of generating",
    )
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL, help="IBSI STS crops")
    parser.add_argument(
        "--wholebody-dir",
        type=Path,
        default=DEFAULT_WHOLEBODY,
        help="real whole-body DICOM series (image/, mask/ RTSTRUCT)",
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="work/output folder")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="Markdown report")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (min)")
    parser.add_argument("--skip-speed", action="store_true", help="skip the speed part")
    parser.add_argument(
        "--tta", action="store_true", help="model masks with flip test-time augmentation"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="lesion probability cut of the model's masks (default: the model folder's)",
    )
    parser.add_argument(
        "--suv-scale",
        type=float,
        default=1.0,
        help="score the phantom scans with every SUV multiplied by this factor (masks as they "
        "are): another scanner's calibration, a wrong weight or dose (default 1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--speed-worker", choices=("predictor", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--speed-pet", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.suv_scale > 0:
        parser.error(f"--suv-scale must be positive, got {args.suv_scale}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 on bad input)."""
    args = parse_args(argv)
    if args.speed_worker:
        speed_worker(args.speed_worker, args.model, args.speed_pet, args.threads, args.repeats)
        return 0
    command = "python scripts/benchmark_seg.py " + shlex.join(argv or sys.argv[1:])
    try:
        check_can_write(args.report, args.overwrite)
        start = time.perf_counter()
        predictor = None
        if (args.model / "metadata.json").is_file():
            predictor = _load_predictor(
                args.model, args.threads, tta=args.tta, threshold=args.threshold
            )
            if args.seed in _training_seeds(predictor.metadata):
                raise PetflareInputError(
                    args.model / "metadata.json",
                    f"seed {args.seed} was used for training; pick another --seed",
                )
        else:
            print(f"no model folder at {args.model}: scoring the baselines only", flush=True)
        phantom = phantom_evaluation(args, predictor)
        real = real_evaluation(args, predictor)
        wholebody = wholebody_evaluation(args, predictor)
        speed = None
        if predictor is not None and not args.skip_speed:
            print("speed benchmark (fresh processes)", flush=True)
            pet_path = Path(phantom.cases[0].pet)
            speed = speed_benchmark(args, pet_path)
        report = write_report(
            args, command.strip(), phantom, real, speed, time.perf_counter() - start, wholebody
        )
    except PetflareInputError as exc:
        print(f"benchmark_seg: error: {exc}", file=sys.stderr)
        return 2
    print(summary_markdown_table(phantom))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
