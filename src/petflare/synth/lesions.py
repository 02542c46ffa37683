"""GIST-like lesions: lobulated blobs with heterogeneous uptake, necrotic cores and nodules.

A :class:`Lesion` is the fixed identity of a tumour (where it is, its shape and texture); a
:class:`LesionState` is how it looks at one timepoint (size factor, viable-tissue SUV, necrosis,
CT density, an optional hot nodule). Lesions are supersampled 2x2x2 per voxel (nodules 3x3x3)
so small ones get the right partial-volume fraction before the PSF blur.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import ndimage

from petflare.synth.anatomy import Anatomy
from petflare.synth.canvas import Canvas
from petflare.synth.geometry import Slices, ramp, rotation_matrix

#: Where lesions may arise; the first two are the typical GIST sites.
SITES: tuple[str, ...] = ("peritoneal", "liver", "lung", "bone", "soft_tissue")

#: Diameter range (mm) per site at baseline (GIST masses ~3-12 cm, metastases smaller).
SITE_DIAMETER_MM: dict[str, tuple[float, float]] = {
    "peritoneal": (30.0, 120.0),
    "liver": (12.0, 60.0),
    "lung": (10.0, 30.0),
    "bone": (15.0, 40.0),
    "soft_tissue": (12.0, 50.0),
}


@dataclass(frozen=True)
class Nodule:
    """A focal hot nodule inside a mass.

    Attributes:
        offset: centre in the host lesion's normalised local frame (1 = host surface).
        radius_mm: nodule radius.
        suv: nodule viable-tissue SUV.
    """

    offset: np.ndarray
    radius_mm: float
    suv: float


@dataclass(frozen=True)
class LesionState:
    """Appearance of a lesion at one timepoint.

    Attributes:
        scale: size factor relative to the lesion's baseline radii.
        suv: mean SUV of the viable (non-necrotic) tissue, before blur and noise.
        heterogeneity: relative standard deviation of the uptake texture.
        necrosis: radius of the necrotic (photopenic, hypodense) core as a fraction of the lesion.
        hu: CT density of the viable tissue.
        nodule: optional focal hot nodule inside the lesion.
        falloff: share of the viable uptake lost from the lesion's centre to its edge (0: uniform
            uptake with a sharp edge; 0.6: the rim at 40% of the centre, as in many real
            tumours); the mean stays ``suv``. Lesions with a necrotic core keep their hot rim.
    """

    scale: float
    suv: float
    heterogeneity: float
    necrosis: float
    hu: float
    nodule: Nodule | None = None
    falloff: float = 0.0


#: Exponent of the radial uptake profile ``1 - falloff * (r / R) ** FALLOFF_POWER``.
FALLOFF_POWER = 1.5


def radial_profile(rel: np.ndarray, falloff: float) -> np.ndarray:
    """Uptake factor at normalised radius ``rel`` (0 centre, 1 surface), mean 1 over the ball.

    ``1 - f * rel**p`` averages ``1 - f * 3 / (3 + p)`` over a uniform ball; dividing by it keeps
    the lesion's mean viable SUV (the scenarios' avidity rule) unchanged.
    """
    r = np.clip(rel, 0.0, 1.0)
    mean = 1.0 - falloff * 3.0 / (3.0 + FALLOFF_POWER)
    return ((1.0 - falloff * r**FALLOFF_POWER) / mean).astype(np.float32)


@dataclass(frozen=True)
class Lesion:
    """Identity of one lesion (patient frame): position, irregular shape, uptake texture."""

    lesion_id: int
    site: str
    center_mm: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray
    bump_dirs: np.ndarray
    bump_amps: np.ndarray
    bump_kappa: float
    texture: np.ndarray

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter at baseline size."""
        return float(2.0 * np.prod(self.radii_mm) ** (1.0 / 3.0))

    def nodule_center_mm(self, state: LesionState) -> np.ndarray | None:
        """Patient-frame centre of the state's nodule (None without one)."""
        if state.nodule is None:
            return None
        return self.center_mm + self.rotation @ (state.nodule.offset * self.radii_mm * state.scale)


def make_lesion(
    rng: np.random.Generator, lesion_id: int, site: str, center_mm: np.ndarray, diameter_mm: float
) -> Lesion:
    """A lobulated, elongated blob of equivalent diameter ``diameter_mm`` at ``center_mm``."""
    elong = rng.uniform(0.75, 1.3, 3)
    elong /= np.prod(elong) ** (1.0 / 3.0)
    n_bumps = int(rng.integers(4, 10))
    dirs = rng.standard_normal((n_bumps, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amps = rng.uniform(-0.3, 0.45, n_bumps) * (1.0 if diameter_mm > 15 else 0.5)
    tex = ndimage.gaussian_filter(rng.standard_normal((12, 12, 12)), 1.5, mode="wrap")
    tex /= tex.std()
    return Lesion(
        lesion_id=lesion_id,
        site=site,
        center_mm=np.asarray(center_mm, float),
        radii_mm=0.5 * diameter_mm * elong,
        rotation=rotation_matrix(rng.uniform(-np.pi, np.pi, 3)),
        bump_dirs=dirs,
        bump_amps=amps,
        bump_kappa=float(rng.uniform(1.5, 5.0)),
        texture=tex.astype(np.float32),
    )


def surface_radius(lesion: Lesion, ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
    """Radius of the lobulated surface (normalised units) along unit directions u."""
    k = np.float32(lesion.bump_kappa)
    mean_bump = (1.0 - np.exp(-2.0 * k)) / (2.0 * k)  # mean of exp(k(cos-1)) over the sphere
    s = np.ones_like(ux)
    dirs = lesion.bump_dirs.astype(np.float32)
    amps = lesion.bump_amps.astype(np.float32)
    mean_bump = np.float32(mean_bump)
    for d, a in zip(dirs, amps, strict=True):
        s += a * (np.exp(k * (ux * d[0] + uy * d[1] + uz * d[2] - 1.0)) - mean_bump)
    return np.maximum(s, 0.45)


def _local(
    lesion: Lesion, x: np.ndarray, y: np.ndarray, z: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised lesion-frame coordinates (1 = ellipsoid surface before lobulation)."""
    c, r = lesion.center_mm.astype(np.float32), lesion.rotation.astype(np.float32)
    radii = np.asarray(radii, np.float32)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    lx = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / radii[0]
    ly = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / radii[1]
    lz = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / radii[2]
    return lx, ly, lz


def _shape_sd(
    lesion: Lesion, x: np.ndarray, y: np.ndarray, z: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(signed distance in mm, normalised radius / surface radius) of a lobulated lesion."""
    lx, ly, lz = _local(lesion, x, y, z, radii)
    rho = np.sqrt(lx * lx + ly * ly + lz * lz)
    inv = 1.0 / np.maximum(rho, 1e-6)
    surf = surface_radius(lesion, lx * inv, ly * inv, lz * inv)
    return (rho - surf) * float(np.mean(radii)), rho / surf


def _supersampled(
    canvas: Canvas,
    sl: Slices,
    fn,
    factor: int,  # noqa: ANN001
) -> np.ndarray:
    """Mean over factor^3 sub-voxel samples of ``fn(x, y, z) -> occupancy``."""
    x, y, z = canvas.coords(sl)
    g = canvas.geometry
    lin = (g.rotation.T @ g.affine[:3, :3]).astype(np.float32)  # patient-frame step per index
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    acc = np.zeros(x.shape, np.float32)
    for o in product(offsets, repeat=3):
        d = lin @ np.asarray(o, np.float32)
        acc += fn(x + d[0], y + d[1], z + d[2])
    return acc / factor**3


@dataclass
class RenderedLesion:
    """Occupancies of one rendered lesion (on ``sl``), for the lesion mask."""

    sl: Slices
    occupancy: np.ndarray
    nodule_sl: Slices | None = None
    nodule_occupancy: np.ndarray | None = None


def render_lesion(canvas: Canvas, lesion: Lesion, state: LesionState) -> RenderedLesion | None:
    """Paint ``lesion`` as it looks in ``state`` into the canvas; returns its occupancies."""
    radii = lesion.radii_mm * state.scale
    reach = float(radii.max()) * (1.0 + float(np.clip(lesion.bump_amps, 0, None).sum())) + 6.0
    sl = canvas.geometry.box(lesion.center_mm - reach, lesion.center_mm + reach)
    if sl is None:
        return None
    half_edge = 0.5 * canvas.edge_mm
    occ = _supersampled(
        canvas, sl, lambda x, y, z: ramp(_shape_sd(lesion, x, y, z, radii)[0], half_edge), 2
    )
    if not occ.any():
        return None
    x, y, z = canvas.coords(sl)
    lx, ly, lz = _local(lesion, x, y, z, lesion.radii_mm)  # texture moves with the lesion
    n = lesion.texture.shape[0]
    idx = [(v / 1.6 + 1.0) * 0.5 * (n - 1) for v in (lx, ly, lz)]
    tex = ndimage.map_coordinates(lesion.texture, idx, order=1, mode="wrap").astype(np.float32)
    _, rel = _shape_sd(lesion, x, y, z, radii)
    rim: float | np.ndarray = 1.0
    if state.necrosis > 0:  # a hot rim around the necrotic core
        rim = 1.0 + (0.25 * np.clip(rel, 0, 1) - 0.12)
    elif state.falloff > 0:
        rim = radial_profile(rel, state.falloff)
    viable = state.suv * np.clip(1.0 + state.heterogeneity * tex, 0.3, 2.2) * rim
    core = np.zeros_like(occ)
    if state.necrosis > 0:
        core_sd = (rel - state.necrosis * (1.0 + 0.15 * tex)) * float(np.mean(radii))
        core = ramp(core_sd, canvas.edge_mm)
    suv = (1.0 - core) * viable + core * (0.45 + 0.1 * tex)
    hu = (1.0 - core) * state.hu + core * 14.0 + 5.0 * tex
    canvas.paint(sl, occ, suv, hu)
    out = RenderedLesion(sl, occ)
    if state.nodule is not None:
        nod = state.nodule
        center = lesion.nodule_center_mm(state)
        assert center is not None
        nsl = canvas.geometry.box(center - nod.radius_mm - 4.0, center + nod.radius_mm + 4.0)
        if nsl is not None:
            nocc = _supersampled(
                canvas,
                nsl,
                lambda x, y, z: ramp(
                    np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
                    - nod.radius_mm,
                    half_edge,
                ),
                3,
            )
            canvas.paint(nsl, nocc, nod.suv, 55.0)
            out.nodule_sl, out.nodule_occupancy = nsl, nocc
    return out


def sample_site_center(
    rng: np.random.Generator,
    anatomy: Anatomy,
    site: str,
    diameter_mm: float,
    avoid: list[tuple[np.ndarray, float]],
    gap_mm: float = 15.0,
) -> np.ndarray | None:
    """A lesion centre at ``site`` that keeps ``gap_mm`` from the lesions in ``avoid``.

    ``avoid`` lists (centre, radius) of existing lesions. Returns None when no place is found.
    """
    r = 0.5 * diameter_mm
    o, t, h = anatomy.organs, anatomy.tubes, anatomy.height_mm
    for _ in range(300):
        if site == "peritoneal":
            lo, hi = anatomy.abdomen.bounds()
            p = rng.uniform(lo, hi)
            p[2] = rng.uniform(-0.47 * h, -0.37 * h)
            sd = float(anatomy.abdomen.sd(*(np.array([v]) for v in p))[0])
            if sd > -0.75 * r or any(
                float(o[k].sd(*(np.array([v]) for v in p))[0]) < 0.6 * r
                for k in ("kidney_r", "kidney_l", "bladder", "liver", "spleen")
            ):
                continue
        elif site == "liver":
            liver = o["liver"]
            p = liver.center + rng.uniform(-1, 1, 3) * liver.radii * 0.75
            if not liver.contains(p, max(0.3, 1.0 - (r + 8.0) / float(liver.radii.min()))):
                continue
        elif site == "lung":
            lung = o["lung_r" if rng.random() < 0.5 else "lung_l"]
            p = lung.center + rng.uniform(-1, 1, 3) * lung.radii * 0.8
            sd_t = float(anatomy.thorax.sd(*(np.array([v]) for v in p))[0])
            if (
                not lung.contains(p, max(0.3, 1.0 - (r + 8.0) / float(lung.radii.min())))
                or sd_t > -r - 5
            ):
                continue
        elif site == "bone":
            choice = rng.integers(0, 3)
            if choice == 0:
                cap = t["spine"][int(rng.integers(1, len(t["spine"])))]
                p = cap.point(float(rng.uniform(0, 1)))
            elif choice == 1:
                il = o["iliac_r" if rng.random() < 0.5 else "iliac_l"]
                p = il.center + rng.uniform(-0.5, 0.5, 3) * il.radii
            else:
                p = t["femur_r" if rng.random() < 0.5 else "femur_l"][0].point(
                    float(rng.uniform(0.05, 0.4))
                )
        elif site == "soft_tissue":
            choice = rng.integers(0, 3)
            if choice == 0:  # thigh muscle
                thigh = anatomy.thighs[int(rng.integers(0, 2))]
                zz = rng.uniform(max(anatomy.fov_z_mm[0] + 30, -0.6 * h), -0.52 * h)
                ang = rng.uniform(0, 2 * np.pi)
                rad = float(np.interp(zz, thigh.z, thigh.half_width)) * rng.uniform(0.35, 0.6)
                p = np.array(
                    [thigh.center_x + rad * np.cos(ang), thigh.center_y[0] + rad * np.sin(ang), zz]
                )
            elif choice == 1:  # paraspinal / back muscles
                cap = t["spine"][int(rng.integers(2, 5))]
                p = cap.point(float(rng.uniform(0, 1))) + np.array(
                    [rng.choice([-1, 1]) * 40.0, -45.0, 0]
                )
            else:  # upper arm
                arm = anatomy.arms[0 if rng.random() < 0.5 else 3]
                p = arm.point(float(rng.uniform(0.3, 0.8)))
        else:
            raise ValueError(f"unknown lesion site {site!r}; expected one of {SITES}")
        inside_fov = anatomy.fov_z_mm[0] + r < p[2] < anatomy.fov_z_mm[1] - r
        if inside_fov and all(np.linalg.norm(p - c) > r + rc + gap_mm for c, rc in avoid):
            return np.asarray(p, float)
    return None
