"""Phantom v2: physiology as varied as real FDG scans, not one generator's habits.

Extra physiologic uptake sites a network must learn to leave alone (urine in the ureters, vocal
cords and submandibular glands, muscles that worked before the scan, inflamed joints, the
injection site, a patchy myocardium), a per-scan bladder filling, a smooth deformation of the
body and organ shapes, and faint lesions (SUV 2-4) that belong in the lesion mask.

Every feature is off at :class:`~petflare.synth.config.PhantomConfig`'s defaults, and every
draw comes from random streams of their own (:func:`v2_streams`), so the default phantom's
images do not change. Uptake levels (SUV, before blur and noise) are literature and real-scan
ranges: exercised muscle 1.5-6, arthritic joints 1.5-4, injection sites up to > 50, urine in a
ureter as in the renal pelvis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from petflare.synth.anatomy import Anatomy, Capsule, Ellipsoid, Physiology, draw_shape
from petflare.synth.canvas import Canvas
from petflare.synth.config import PhantomConfig
from petflare.synth.geometry import ScanGeometry
from petflare.synth.lesions import SITES, LesionState, make_lesion, sample_site_center
from petflare.synth.scenarios import MAX_STABLE_RATIO, Scenario

#: Muscle groups that may have worked before the scan.
MUSCLE_GROUPS: tuple[str, ...] = ("psoas", "thighs", "paraspinal", "neck", "upper_arms")

#: Joints that may show synovitis / degenerative uptake.
JOINTS: tuple[str, ...] = ("shoulders", "hips")

#: Wavelength range (mm) of the organ deformation's modes: organ-sized bulges and bends.
WARP_WAVELENGTH_MM: tuple[float, float] = (60.0, 180.0)

#: Number of sinusoidal modes of the organ deformation.
WARP_MODES = 6

#: Diameter range (mm) of faint lesions (small nodes and metastases).
FAINT_DIAMETER_MM: tuple[float, float] = (8.0, 25.0)

#: Where faint lesions arise (probabilities over ``lesions.SITES``).
FAINT_SITE_P: tuple[float, ...] = (0.25, 0.2, 0.2, 0.1, 0.25)


def v2_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Phantom v2's generators of a pair: (patient, baseline scan, follow-up scan)."""
    children = np.random.SeedSequence([int(seed), 0x2F2]).spawn(3)
    return (
        np.random.default_rng(children[0]),
        np.random.default_rng(children[1]),
        np.random.default_rng(children[2]),
    )


@dataclass(frozen=True)
class Warp:
    """A smooth displacement field (mm) of the patient frame: a sum of sinusoidal modes."""

    wavevectors: np.ndarray  # (K, 3) rad/mm
    phases: np.ndarray  # (K,)
    amplitudes_mm: np.ndarray  # (K, 3)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Displacement (3, *x.shape) at patient-frame points (float32)."""
        out = np.zeros((3, *np.shape(x)), dtype=np.float32)
        for k in range(len(self.phases)):
            w = self.wavevectors[k].astype(np.float32)
            wave = np.sin(w[0] * x + w[1] * y + w[2] * z + np.float32(self.phases[k]))
            for c in range(3):
                out[c] += np.float32(self.amplitudes_mm[k, c]) * wave
        return out

    def on_grid(self, geometry: ScanGeometry) -> np.ndarray:
        """Displacement (3, *shape) at every voxel of a scan (same values as ``__call__``).

        A mode's phase is linear in the voxel indices, so its complex exponential is an outer
        product of three 1-D ones: no sine per voxel.
        """
        lin = geometry.rotation.T @ geometry.affine[:3, :3]
        off = geometry.rotation.T @ (geometry.affine[:3, 3] - geometry.translation_mm)
        idx = [np.arange(n, dtype=np.float64) for n in geometry.shape]
        out = np.zeros((3, *geometry.shape), dtype=np.float32)
        for k in range(len(self.phases)):
            w = self.wavevectors[k]
            slope = w @ lin  # phase change per voxel step along each array axis
            e = [np.exp(1j * slope[a] * idx[a]) for a in range(3)]
            e01 = np.exp(1j * (w @ off + self.phases[k])) * np.outer(e[0], e[1])
            re01 = e01.real.astype(np.float32)[:, :, None]
            im01 = e01.imag.astype(np.float32)[:, :, None]
            wave = re01 * e[2].imag.astype(np.float32) + im01 * e[2].real.astype(np.float32)
            for c in range(3):
                out[c] += np.float32(self.amplitudes_mm[k, c]) * wave
        return out


def sample_warp(rng: np.random.Generator, rms_mm: float) -> Warp:
    """A random organ deformation whose displacement has an RMS length of about ``rms_mm``."""
    wavelength = rng.uniform(*WARP_WAVELENGTH_MM, WARP_MODES)
    dirs = rng.standard_normal((WARP_MODES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # each mode's sine has variance 1/2: per-component SD a gives RMS length a * sqrt(3K/2)
    amp_sd = rms_mm / np.sqrt(1.5 * WARP_MODES)
    return Warp(
        wavevectors=dirs * (2.0 * np.pi / wavelength)[:, None],
        phases=rng.uniform(0.0, 2.0 * np.pi, WARP_MODES),
        amplitudes_mm=rng.normal(0.0, amp_sd, (WARP_MODES, 3)),
    )


@dataclass(frozen=True)
class ScanExtras:
    """Phantom v2's extra physiology of one scan (recorded in the ground truth).

    Attributes:
        bladder_fill: factor on the bladder's radii.
        myocardium_patchiness: strength of the regional unevenness of the heart (0: even).
        ureters: per side (right, left), which of three ureter segments hold urine.
        ureter_suv: urine SUV in the ureters.
        vocal_cords_suv: vocal-cord uptake (with the submandibular glands), or None.
        muscles: exercised muscle groups (``MUSCLE_GROUPS``).
        muscle_suv: their SUV.
        joints: inflamed joints (``JOINTS``).
        joint_suv: their SUV.
        injection_site: (arm side 0/1, position 0-1 from elbow to hand, diameter mm, SUV), or
            None.
    """

    bladder_fill: float = 1.0
    myocardium_patchiness: float = 0.0
    ureters: tuple[tuple[bool, ...], ...] = ()
    ureter_suv: float = 0.0
    vocal_cords_suv: float | None = None
    muscles: tuple[str, ...] = ()
    muscle_suv: float = 0.0
    joints: tuple[str, ...] = ()
    joint_suv: float = 0.0
    injection_site: tuple[int, float, float, float] | None = None


def sample_extras(rng: np.random.Generator, config: PhantomConfig, phys: Physiology) -> ScanExtras:
    """Draw one scan's extras (always the same number of draws, whatever the config)."""
    fill = float(rng.uniform(*config.bladder_fill))
    patchy = rng.random() < config.myocardium_patchy_probability and phys.myocardium > 2.0
    patchiness = float(rng.uniform(0.4, 1.0))
    ureter_on = rng.random(2) < config.ureter_probability
    segments = rng.random((2, 3)) < 0.6
    segments[:, 0] |= ~segments.any(axis=1)  # a visible ureter shows at least one segment
    ureter_suv = phys.urine * float(rng.uniform(0.3, 1.0))
    cords = rng.random() < config.vocal_cords_probability
    cords_suv = float(rng.uniform(1.5, 6.0))
    exercised = rng.random() < config.exercised_muscle_probability
    n_groups = int(rng.integers(1, 4))
    groups = tuple(sorted(rng.choice(MUSCLE_GROUPS, n_groups, replace=False).tolist()))
    muscle_suv = float(rng.uniform(*config.exercised_muscle_suv))
    inflamed = rng.random() < config.joint_probability
    joint_pick = int(rng.integers(0, 3))  # shoulders, hips or both
    joint_suv = float(rng.uniform(*config.joint_suv))
    injected = rng.random() < config.injection_site_probability
    site = (
        int(rng.integers(0, 2)),
        float(rng.uniform(0.0, 1.0)),
        float(rng.uniform(6.0, 20.0)),
        float(np.exp(rng.uniform(*np.log(config.injection_site_suv)))),
    )
    return ScanExtras(
        bladder_fill=fill,
        myocardium_patchiness=patchiness if patchy else 0.0,
        ureters=tuple(
            tuple(bool(v) for v in segments[i]) if ureter_on[i] else (False, False, False)
            for i in range(2)
        )
        if ureter_on.any()
        else (),
        ureter_suv=ureter_suv if ureter_on.any() else 0.0,
        vocal_cords_suv=cords_suv if cords else None,
        muscles=groups if exercised else (),
        muscle_suv=muscle_suv if exercised else 0.0,
        joints=(JOINTS if joint_pick == 2 else (JOINTS[joint_pick],)) if inflamed else (),
        joint_suv=joint_suv if inflamed else 0.0,
        injection_site=site if injected else None,
    )


def with_bladder_fill(anatomy: Anatomy, fill: float) -> Anatomy:
    """The anatomy with its bladder's radii scaled by ``fill`` (this scan's filling)."""
    if fill == 1.0:
        return anatomy
    bladder = anatomy.organs["bladder"]
    organs = {**anatomy.organs, "bladder": replace(bladder, radii=bladder.radii * fill)}
    return replace(anatomy, organs=organs)


def paint_extras(
    canvas: Canvas,
    anatomy: Anatomy,
    phys: Physiology,
    extras: ScanExtras,
    rng: np.random.Generator,
) -> None:
    """Paint one scan's extras over the rendered anatomy (before the lesions).

    ``rng`` draws their textures (a stream of phantom v2's, not the canvas').
    """
    a, o = anatomy, anatomy.organs
    zf = -a.height_mm  # z of a fraction of body height below the vertex: f * zf
    if extras.myocardium_patchiness > 0:
        _patchy_myocardium(canvas, o["lv"], phys.myocardium, extras.myocardium_patchiness, rng)
    for side, segments in zip(("r", "l"), extras.ureters, strict=False):
        pelvis = o[f"renal_pelvis_{side}"].center
        bladder = o["bladder"]
        s = 1.0 if side == "r" else -1.0
        brim = np.array([0.75 * pelvis[0], pelvis[1] + 12.0, 0.445 * zf])
        mid = 0.5 * (pelvis + brim)
        end = bladder.center + np.array([s * 0.7 * bladder.radii[0], -0.5 * bladder.radii[1], 0])
        radius = float(rng.uniform(3.5, 5.0))
        for visible, (p, q) in zip(
            segments, ((pelvis, mid), (mid, brim), (brim, end)), strict=True
        ):
            if visible:
                draw_shape(
                    canvas, Capsule(p, q, radius, radius), extras.ureter_suv, 10.0, organ="kidney"
                )
    if extras.vocal_cords_suv is not None:
        _head_neck(canvas, a, phys, extras.vocal_cords_suv, rng)
    if extras.muscles:
        _muscles(canvas, a, extras.muscles, extras.muscle_suv, rng)
    for joint in extras.joints:
        _joints(canvas, a, joint, extras.joint_suv)
    if extras.injection_site is not None:
        arm_side, t, diameter, suv = extras.injection_site
        forearm = a.arms[3 * arm_side + 1]  # shoulder-elbow, elbow-wrist, wrist-hand per side
        r = forearm.radius_a + t * (forearm.radius_b - forearm.radius_a)
        centre = forearm.point(t) + np.array([0.0, 0.45 * r, 0.0])  # a superficial vein
        draw_shape(
            canvas,
            Ellipsoid(centre, np.full(3, 0.5 * diameter)),
            suv,
            40.0,
            organ="other_physiological",
        )


def _patchy_myocardium(
    canvas: Canvas, lv: Ellipsoid, level: float, patchiness: float, rng: np.random.Generator
) -> None:
    """Repaint the left-ventricular wall with regionally uneven uptake (0.15-2 x its level)."""
    sl = canvas.box(*lv.bounds(4.0))
    if sl is None:
        return
    x, y, z = canvas.body_coords(sl)
    wall = np.clip(
        canvas.occupancy(lv.sd(x, y, z)) - canvas.occupancy(lv.scaled(-10.0).sd(x, y, z)), 0, 1
    )
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    c, r = lv.center, float(lv.radii.max())
    gradient = (
        direction[0] * (x - c[0]) + direction[1] * (y - c[1]) + direction[2] * (z - c[2])
    ) / r
    patches = canvas.texture(sl, 12.0, rng)
    factor = np.clip(1.0 + patchiness * (0.6 * patches + 0.6 * gradient), 0.15, 2.0)
    canvas.paint(sl, wall, level * factor, None, organ="myocardium")


def _head_neck(
    canvas: Canvas, a: Anatomy, phys: Physiology, cords_suv: float, rng: np.random.Generator
) -> None:
    """Vocal cords (larynx, anterior neck) and submandibular glands."""
    z = -0.155 * a.height_mm
    yc = float(np.interp(z, a.body.z, a.body.center_y))
    depth = float(np.interp(z, a.body.z, a.body.half_depth))
    for s in (1.0, -1.0):
        cord = Ellipsoid(np.array([s * 5.0, yc + 0.45 * depth, z]), np.array([4.0, 9.0, 6.0]))
        draw_shape(canvas, cord, cords_suv, 40.0, organ="head_neck")
        gland = Ellipsoid(
            a.face.center + np.array([s * 0.62 * a.face.radii[0], -0.1 * a.face.radii[1], -48.0]),
            np.array([11.0, 14.0, 10.0]) * float(rng.uniform(0.85, 1.15)),
        )
        suv = phys.salivary * float(rng.uniform(0.8, 1.3))
        draw_shape(canvas, gland, suv, 35.0, organ="head_neck")


def _muscles(
    canvas: Canvas,
    a: Anatomy,
    groups: tuple[str, ...],
    suv: float,
    rng: np.random.Generator,
) -> None:
    """Muscles that worked before the scan: striated uptake along the muscle."""
    shapes: list[Capsule] = []
    t = a.tubes
    if "psoas" in groups:
        shapes += [t["psoas_r"][0], t["psoas_l"][0]]
    if "thighs" in groups:
        for thigh in a.thighs:
            r = float(np.mean(thigh.half_width))
            top = np.array([thigh.center_x, float(thigh.center_y[-1]) + 0.35 * r, thigh.z[-1]])
            bottom = np.array([thigh.center_x, float(thigh.center_y[0]) + 0.35 * r, thigh.z[0]])
            shapes.append(Capsule(top, bottom, 0.45 * r, 0.4 * r))
    if "paraspinal" in groups:
        for cap in t["spine"][1:5]:
            for s in (1.0, -1.0):
                off = np.array([s * 32.0, -28.0, 0.0])
                shapes.append(Capsule(cap.a + off, cap.b + off, 14.0, 14.0))
    if "neck" in groups:
        for s, name in ((1.0, "clavicle_r"), (-1.0, "clavicle_l")):
            mastoid = a.head.center + np.array(
                [s * 0.65 * a.head.radii[0], -0.2 * a.head.radii[1], -0.75 * a.head.radii[2]]
            )
            shapes.append(Capsule(mastoid, t[name][0].a + np.array([0, -10.0, 8.0]), 9.0, 8.0))
    if "upper_arms" in groups:
        for k in (0, 3):
            arm = a.arms[k]
            shapes.append(Capsule(arm.a, arm.b, 0.6 * arm.radius_a, 0.6 * arm.radius_b))
    for shape in shapes:
        sl = canvas.box(*shape.bounds(4.0))
        if sl is None:
            continue
        occ = canvas.occupancy(shape.sd(*canvas.body_coords(sl))) * _soft_tissue(canvas, sl)
        striations = np.clip(1.0 + 0.25 * canvas.texture(sl, 5.0, rng), 0.3, 2.0)
        canvas.paint(sl, occ, suv * striations, None, organ="other_physiological")


def _soft_tissue(canvas: Canvas, sl: tuple[slice, slice, slice]) -> np.ndarray:
    """1 where a voxel shows no organ and no bone yet: muscles and joints paint only there."""
    return ((canvas.organs[sl] == 0) & (canvas.hu[sl] < 150.0)).astype(np.float32)


def _joints(canvas: Canvas, a: Anatomy, joint: str, suv: float) -> None:
    """Synovial uptake around the shoulders or hips: a shell around the joint."""
    if joint == "shoulders":
        centres = [a.tubes[f"humerus_{k}"][0].a for k in (0, 1)]
        radii = [np.full(3, 26.0), np.full(3, 26.0)]
    else:
        heads = [a.organs["femoral_head_r"], a.organs["femoral_head_l"]]
        centres = [h.center for h in heads]
        radii = [h.radii + 6.0 for h in heads]
    for centre, radius in zip(centres, radii, strict=True):
        outer = Ellipsoid(centre, radius)
        inner = Ellipsoid(centre, np.maximum(radius - 12.0, 2.0))
        sl = canvas.box(*outer.bounds(4.0))
        if sl is None:
            continue
        x, y, z = canvas.body_coords(sl)
        shell = np.clip(
            canvas.occupancy(outer.sd(x, y, z)) - canvas.occupancy(inner.sd(x, y, z)), 0, 1
        ) * _soft_tissue(canvas, sl)
        canvas.paint(sl, shell, suv, None, organ="other_physiological")


def add_faint_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    scenario: Scenario,
    n_range: tuple[int, int],
    suv_range: tuple[float, float],
    liver_suv: float,
) -> list[int]:
    """Add stable faint lesions (in both scans) to ``scenario``; return their ids.

    Their viable SUV is drawn from ``suv_range``, at least 1.3 x ``liver_suv`` in the liver
    (just above its surroundings); they change by less than ``MAX_STABLE_RATIO`` between the
    scans, so no pattern's rule changes. The caller labels them in the lesion mask.
    """
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    avoid = [(les.center_mm, 0.65 * les.diameter_mm) for les in scenario.lesions.values()]
    ids: list[int] = []
    next_id = max(scenario.lesions) + 1
    for _ in range(n):
        site = str(rng.choice(SITES, p=FAINT_SITE_P))
        diameter = float(np.exp(rng.uniform(*np.log(FAINT_DIAMETER_MM))))
        centre = sample_site_center(rng, anatomy, site, diameter, avoid)
        if centre is None:
            continue
        suv = float(rng.uniform(*suv_range))
        if site == "liver":
            suv = max(suv, 1.3 * liver_suv)
        state = LesionState(
            scale=1.0,
            suv=suv,
            heterogeneity=float(rng.uniform(0.03, 0.1)),
            necrosis=0.0,
            hu=float(rng.uniform(30.0, 45.0)),
        )
        scenario.lesions[next_id] = make_lesion(rng, next_id, site, centre, diameter)
        scenario.baseline[next_id] = state
        ratio = float(rng.uniform(0.92, min(1.08, MAX_STABLE_RATIO)))
        scenario.followup[next_id] = replace(state, suv=suv * ratio)
        scenario.change[next_id] = "stable"
        avoid.append((centre, 0.65 * diameter))
        ids.append(next_id)
        next_id += 1
    return ids
