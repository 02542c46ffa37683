"""GPU benchmark, one prepared run: training throughput, whole-body inference, pairs, CPU vs GPU.

Meant for a session that is lent a GPU (H100/H200 class) for a few minutes: everything the
issues ask to measure on a GPU is done by this one script, which writes one Markdown file
(``--out``, default ``docs/reports/bench_gpu.md``) naming the card. On a CPU it runs with
``--quick`` (tiny sizes) so that the tests exercise every part.

Parts:
1. Training: steps per second of the ``autopet_fdg`` experiment's network and loss (DynUNet,
   PET+CT, 128^3 patches, batch 2 volumes x 2 patches, AdamW, bf16 autocast) on random patches.
2. Whole-body inference at autoPET resolution (a phantom at 2.04 x 2.04 x 3 mm padded to about
   400 x 400 x 326 voxels): the shipped model through ``Predictor.predict`` (resampling to its
   spacing, Gaussian windows, back to the input grid) and MONAI's ``sliding_window_inference``
   with defaults on the same network and preprocessed volume; and the ``autopet_fdg`` network
   (random weights) sliding over the full-resolution volume, as a GPU-trained model would.
3. A pair end to end (both scans segmented, quantified, compared, pattern called), warm, and
   batch throughput in pairs per minute (model loaded once, ``run_manifest``).
4. CPU vs GPU: the shipped model's mask of one scan on both devices (voxels that differ, Dice).

Example (on the GPU machine):
    .venv/bin/python scripts/benchmark_gpu.py --out docs/reports/bench_gpu.md --overwrite
Smoke run on a CPU (tests):
    .venv/bin/python scripts/benchmark_gpu.py --device cpu --quick --out /tmp/g.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text, check_can_write

#: autoPET FDG volumes are about this size at 2.04 x 2.04 x 3 mm.
AUTOPET_SHAPE = (400, 400, 326)
AUTOPET_SPACING = (2.04, 2.04, 3.0)
PARTS = ("train", "inference", "pairs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/phantom-unet"))
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--train-steps", type=int, default=30, help="timed training steps")
    p.add_argument("--pairs", type=int, default=4, help="pairs in the batch-throughput run")
    p.add_argument("--seed", type=int, default=4242, help="phantom seed (not a training seed)")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which parts to run (default all); a lease too short for all can be split",
    )
    p.add_argument("--out", type=Path, default=Path("docs/reports/bench_gpu.md"))
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


class Clock:
    """Wall-clock timing that waits for queued GPU work before reading the clock."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], repeats: int = 1) -> tuple[list[float], Any]:
        """Seconds of each of ``repeats`` calls (synchronised), and the last result."""
        times, out = [], None
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return times, out

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def autopet_config(quick: bool) -> Any:
    """The composed ``autopet_fdg`` training config (the network and loss users train)."""
    from hydra import compose, initialize_config_dir

    # the configs are composed as the commands compose them (this also registers ${len:...})
    from petflare.cli._common import config_dir

    overrides = ["experiment=autopet_fdg"]
    if quick:
        overrides += ["net.filters=[8,16,32]", "net.strides=[1,2,2]"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def train_throughput(args: argparse.Namespace, device: Any, clock: Clock) -> dict[str, Any]:
    """Steps per second of the autopet_fdg network + loss on random patches (bf16 on CUDA)."""
    import torch
    from hydra.utils import instantiate

    cfg = autopet_config(args.quick)
    net = instantiate(cfg.net).to(device).train()
    loss_fn = instantiate(cfg.model.loss)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    patch = (32, 32, 32) if args.quick else tuple(cfg.data.augmentation.patch_size_vox)
    n_patches = int(cfg.data.batch_size) * int(cfg.data.augmentation.num_samples)
    n_channels = len(cfg.data.preprocessing.channels)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn((n_patches, n_channels, *patch), generator=gen).to(device)
    label = (torch.rand((n_patches, 1, *patch), generator=gen) > 0.97).float().to(device)
    use_bf16 = device.type == "cuda"

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(net(image), label)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    steps = 2 if args.quick else int(args.train_steps)
    clock.time(step, repeats=2 if args.quick else 5)  # warm-up (cuDNN autotuning, allocator)
    clock.reset_peak()
    times, _ = clock.time(step, repeats=steps)
    return {
        "network": str(cfg.net._target_),
        "filters": list(cfg.net.filters),
        "patch_vox": list(patch),
        "patches_per_step": n_patches,
        "channels": n_channels,
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "steps": steps,
        "steps_per_s": steps / sum(times),
        "patches_per_s": steps * n_patches / sum(times),
        "peak_gpu_gb": clock.peak_gb(),
    }


def autopet_like_pairs(folder: Path, quick: bool, seed: int, n_pairs: int) -> list[dict[str, Any]]:
    """Phantom pairs at autoPET spacing, RAS, padded (air) in-plane to the autoPET size."""
    from petflare.io import load_manifest
    from petflare.io.nifti import load_nifti, save_nifti
    from petflare.synth import PhantomConfig, generate_dataset

    spacing = (6.0, 6.0, 6.0) if quick else AUTOPET_SPACING
    config = PhantomConfig(
        spacing_inplane_mm=(spacing[0], spacing[0]),
        spacing_slice_mm=(spacing[2], spacing[2]),
        orientations=("RAS",),
    )
    manifest = generate_dataset(folder, max(1, n_pairs), seed, config=config, overwrite=True)
    rows = load_manifest(manifest)
    target = (96, 96, None) if quick else (AUTOPET_SHAPE[0], AUTOPET_SHAPE[1], None)
    for row in rows:
        for tp in ("baseline", "followup"):
            for key, fill in ((f"{tp}_pet", 0.0), (f"{tp}_ct", -1000.0), (f"{tp}_mask", 0)):
                if not row.get(key):
                    continue
                arr, affine = load_nifti(row[key])
                pads = []
                shift = np.zeros(3)
                for axis, size in enumerate(target):
                    extra = 0 if size is None else max(int(size) - arr.shape[axis], 0)
                    pads.append((extra // 2, extra - extra // 2))
                    shift[axis] = extra // 2
                arr = np.pad(arr, pads, constant_values=fill)
                affine = affine.copy()
                affine[:3, 3] -= affine[:3, :3] @ shift  # same world position of every voxel
                save_nifti(arr, affine, row[key], overwrite=True)
    return rows


def inference_parts(
    args: argparse.Namespace, device: Any, clock: Clock, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Shipped model on one autoPET-size scan (Predictor and MONAI defaults), the autopet_fdg
    network at full resolution, and CPU vs GPU agreement."""
    import torch
    from hydra.utils import instantiate
    from monai.inferers import sliding_window_inference

    from petflare.inference.predictor import Predictor
    from petflare.io import load_study

    row = rows[0]
    study = load_study(row["baseline_pet"], row.get("baseline_ct") or None)
    predictor = Predictor.from_folder(args.model_dir, device=device)
    out: dict[str, Any] = {
        "input_shape": list(study.shape),
        "input_spacing_mm": [round(s, 3) for s in study.spacing_mm],
    }
    clock.time(lambda: predictor.predict(study))  # warm-up
    clock.reset_peak()
    times, mask_dev = clock.time(lambda: predictor.predict(study), repeats=3)
    out["predictor_s"] = min(times)
    out["predictor_peak_gpu_gb"] = clock.peak_gb()

    image: Any = predictor.preprocess(study)[None]  # a MONAI MetaTensor
    image = image.as_tensor().to(device)
    roi = tuple(int(s) for s in predictor.inference.roi_size_vox)
    out["model_grid_shape"] = list(image.shape[2:])

    def monai_defaults() -> Any:
        with torch.no_grad():
            return sliding_window_inference(image, roi, 1, predictor.net)

    clock.time(monai_defaults)
    times, _ = clock.time(monai_defaults, repeats=3)
    out["monai_defaults_s"] = min(times)

    # The autopet_fdg network over the full-resolution volume (what a GPU-trained model costs).
    cfg = autopet_config(args.quick)
    big = instantiate(cfg.net).to(device).eval()
    n_ch = len(cfg.data.preprocessing.channels)
    full = torch.zeros((1, n_ch, *study.shape), device=device)
    full[:, 0] = torch.as_tensor(np.log1p(np.clip(study.pet, 0, 30)), device=device)
    big_roi = (32, 32, 32) if args.quick else tuple(cfg.data.augmentation.patch_size_vox)

    def full_resolution() -> Any:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            return sliding_window_inference(
                full, big_roi, int(cfg.model.sw_batch_size), big, overlap=0.5, mode="gaussian"
            )

    clock.time(full_resolution)
    clock.reset_peak()
    times, _ = clock.time(full_resolution, repeats=2)
    out["autopet_net_full_res_s"] = min(times)
    out["autopet_net_roi"] = list(big_roi)
    out["autopet_net_peak_gpu_gb"] = clock.peak_gb()

    # The same scan stored in another axis order (P, I, L): the mask must come back onto the
    # same voxels (orientation handled on the device, end to end).
    turned, back = _reoriented(study, ("P", "I", "L"))
    mask_turned = back(np.asarray(predictor.predict(turned)))
    out["reoriented_axcodes"] = "PIL"
    out["reoriented_differing_voxels"] = int((mask_turned != np.asarray(mask_dev)).sum())
    out["reoriented_lesion_voxels"] = int((np.asarray(mask_dev) > 0).sum())

    # CPU vs GPU masks of the shipped model on the same scan.
    if device.type != "cpu":
        cpu_pred = Predictor.from_folder(args.model_dir, device="cpu")
        mask_cpu = np.asarray(cpu_pred.predict(study)) > 0
        mask_gpu = np.asarray(mask_dev) > 0
        both = int((mask_cpu & mask_gpu).sum())
        total = int(mask_cpu.sum() + mask_gpu.sum())
        out["cpu_gpu_differing_voxels"] = int((mask_cpu != mask_gpu).sum())
        out["cpu_gpu_lesion_voxels"] = [int(mask_cpu.sum()), int(mask_gpu.sum())]
        out["cpu_gpu_dice"] = 1.0 if total == 0 else 2.0 * both / total
    return out


def _reoriented(study: Any, axcodes: tuple[str, str, str]) -> tuple[Any, Callable[..., Any]]:
    """The study with its arrays in another axis order (affine adjusted: same world), and a
    function taking an array in that order back to the study's order."""
    import nibabel as nib

    from petflare.io.study import Study

    now = nib.orientations.io_orientation(study.affine)
    transform = nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(axcodes))
    undo = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(axcodes), now)
    affine = study.affine @ nib.orientations.inv_ornt_aff(transform, study.shape)

    def turn(arr: Any) -> Any:
        return (
            None
            if arr is None
            else np.ascontiguousarray(nib.orientations.apply_orientation(arr, transform))
        )

    turned = Study(pet=turn(study.pet), affine=affine, ct=turn(study.ct), meta=study.meta)
    return turned, lambda arr: nib.orientations.apply_orientation(arr, undo)


def pair_parts(
    args: argparse.Namespace, device: Any, clock: Clock, rows: list[dict[str, Any]], tmp: Path
) -> dict[str, Any]:
    """One pair end to end (warm) and batch throughput through ``run_manifest``."""
    from petflare.inference.pattern import HEAD_METADATA_FILE, PatternClassifier
    from petflare.inference.pipeline import ScanInput, run_manifest, run_pair
    from petflare.inference.predictor import Predictor
    from petflare.inference.writers import write_outputs

    predictor = Predictor.from_folder(args.model_dir, device=device)
    head = (
        PatternClassifier.from_folder(args.model_dir, device=device)
        if (args.model_dir / HEAD_METADATA_FILE).is_file()
        else None
    )
    row = rows[0]

    def one_pair(i: int) -> Any:
        result = run_pair(
            ScanInput(pet=Path(row["baseline_pet"]), ct=_path(row.get("baseline_ct"))),
            ScanInput(pet=Path(row["followup_pet"]), ct=_path(row.get("followup_ct"))),
            predictor,
            pattern_head=head,
        )
        write_outputs(result, tmp / f"pair{i}", html=True)
        return result

    clock.time(lambda: one_pair(0))  # warm-up
    times, result = clock.time(lambda: one_pair(1), repeats=1)
    out: dict[str, Any] = {
        "pair_s": times[0],
        "pair_stages_s": {k: round(v, 3) for k, v in result.timer.timings_s.items()},
        "pattern_source": None if result.pattern is None else result.pattern.source,
    }
    n = max(1, min(int(args.pairs), len(rows)))
    batch_rows = [dict(r) for r in rows[:n]]
    times, _ = clock.time(
        lambda: run_manifest(batch_rows, predictor, tmp / "batch", pattern_head=head), repeats=1
    )
    out["batch_pairs"] = n
    out["batch_s"] = times[0]
    out["pairs_per_minute"] = 60.0 * n / times[0]
    return out


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def markdown(info: dict[str, Any], command: str) -> str:
    """The report: one section per part, numbers as measured."""
    lines = [
        "# GPU benchmark",
        "",
        f"Device: **{info['device_name']}** ({info['device']}); torch {info['torch']}, "
        f"CUDA {info['cuda']}; {info['date']}. Measured by:",
        "",
        f"```bash\n{command}\n```",
        "",
    ]
    if "train" in info:
        lines += _train_lines(info["train"])
    if "inference" in info:
        lines += _inference_lines(info["inference"])
    if "pairs" in info:
        lines += _pair_lines(info["pairs"])
    lines += [
        "## Raw (JSON)",
        "",
        "```json",
        json.dumps(info, indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _train_lines(t: dict[str, Any]) -> list[str]:
    return [
        "## Training throughput (`experiment=autopet_fdg` network and loss, random patches)",
        "",
        "| network | patch | patches/step | precision | steps/s | patches/s | peak GPU GB |",
        "|---|---|---|---|---|---|---|",
        f"| {t['network']} {t['filters']} | {t['patch_vox']} | {t['patches_per_step']} | "
        f"{t['precision']} | {t['steps_per_s']:.2f} | {t['patches_per_s']:.1f} | "
        f"{_gb(t['peak_gpu_gb'])} |",
        "",
    ]


def _inference_lines(i: dict[str, Any]) -> list[str]:
    lines = [
        f"## Whole-body inference, input {i['input_shape']} voxels at {i['input_spacing_mm']} mm",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| shipped model, petflare `Predictor.predict` (resample to the model grid "
        f"{i['model_grid_shape']}, Gaussian windows, back to the input grid, post-processing) | "
        f"{i['predictor_s']:.2f} |",
        f"| shipped model, MONAI `sliding_window_inference` defaults (network only) | "
        f"{i['monai_defaults_s']:.2f} |",
        f"| `autopet_fdg` network (random weights) over the full-resolution volume, window "
        f"{i['autopet_net_roi']}, overlap 0.5, bf16 | {i['autopet_net_full_res_s']:.2f} |",
        "",
        f"Peak GPU memory: Predictor {_gb(i['predictor_peak_gpu_gb'])} GB, autopet_fdg network "
        f"{_gb(i['autopet_net_peak_gpu_gb'])} GB.",
        "",
    ]
    if "reoriented_differing_voxels" in i:
        lines += [
            f"Same scan stored as {i['reoriented_axcodes']} (axes permuted and flipped, affine "
            f"adjusted): {i['reoriented_differing_voxels']} of "
            f"{i['reoriented_lesion_voxels']} lesion voxels differ once mapped back.",
            "",
        ]
    if "cpu_gpu_dice" in i:
        lines += [
            f"CPU vs GPU masks of the shipped model on this scan: Dice {i['cpu_gpu_dice']:.5f}, "
            f"{i['cpu_gpu_differing_voxels']} differing voxels (lesion voxels CPU / GPU "
            f"{i['cpu_gpu_lesion_voxels'][0]} / {i['cpu_gpu_lesion_voxels'][1]}).",
            "",
        ]
    return lines


def _pair_lines(p: dict[str, Any]) -> list[str]:
    return [
        "## Pairs end to end (segmentation of both scans, quantification, pattern, outputs)",
        "",
        f"One pair, warm: {p['pair_s']:.2f} s (pattern by {p['pattern_source']}); stages (s): "
        f"{json.dumps(p['pair_stages_s'])}.",
        "",
        f"Batch (`run_manifest`, model loaded once, reading overlapped): {p['batch_pairs']} pairs "
        f"in {p['batch_s']:.1f} s = {p['pairs_per_minute']:.1f} pairs per minute.",
        "",
    ]


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    try:
        check_can_write(args.out, args.overwrite)
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PetflareInputError(None, "--device cuda but no CUDA device is visible")
        if not (args.model_dir / "model.pt").is_file():
            raise PetflareInputError(args.model_dir, "not a model folder (no model.pt)")
    except PetflareInputError as exc:
        print(f"benchmark_gpu: {exc}", file=sys.stderr)
        return 2
    clock = Clock(device)
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "quick": bool(args.quick),
    }
    with tempfile.TemporaryDirectory(prefix="petflare-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        if "train" in args.parts:
            print("benchmark_gpu: training throughput", file=sys.stderr)
            info["train"] = train_throughput(args, device, clock)
        if "inference" in args.parts or "pairs" in args.parts:
            print("benchmark_gpu: phantom pairs at autoPET resolution", file=sys.stderr)
            n_pairs = args.pairs if "pairs" in args.parts else 1
            rows = autopet_like_pairs(tmp / "pairs", args.quick, args.seed, n_pairs)
        if "inference" in args.parts:
            print("benchmark_gpu: whole-body inference", file=sys.stderr)
            info["inference"] = inference_parts(args, device, clock, rows)
        if "pairs" in args.parts:
            print("benchmark_gpu: pairs end to end", file=sys.stderr)
            info["pairs"] = pair_parts(args, device, clock, rows, tmp / "out")
    command = "python scripts/benchmark_gpu.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    atomic_write_text(args.out, markdown(info, command), overwrite=args.overwrite)
    print(f"benchmark_gpu: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
