"""Adult whole-body anatomy (vertex to thighs) and its physiologic FDG uptake and CT numbers.

Landmarks are placed at fractions of body height from the vertex (standard anthropometric
proportions: chin ~0.13 H, shoulders ~0.19 H, diaphragm ~0.33 H, iliac crest ~0.43 H, pubis ~0.50 H)
and every organ gets its own size and position jitter, so no two patients look alike.

Physiologic uptake (SUVbw, typical adult FDG scan 60 min p.i.): brain 6-10, myocardium 0-8
(fasting dependent), liver 1.8-3.0, spleen 0.75-0.9 x liver, blood pool 1.4-2.1, kidneys 2.5-4
(renal pelvis and bladder 5-60, urine), red marrow 1.1-2.0, muscle 0.6-0.9, fat 0.25-0.4,
lung 0.3-0.6. CT numbers (HU): air -1000, lung -850, fat -100, muscle/soft tissue 40, liver 55-65,
blood 40, cancellous bone 200-300, cortical bone 700-1200.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from petflare.synth.canvas import Canvas
from petflare.synth.config import PhantomConfig
from petflare.synth.geometry import Profile, capsule_sd, ellipsoid_sd, rotation_matrix

_REF_HEIGHT_MM = 1750.0


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in the patient frame (mm)."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray | None = None

    def sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm)."""
        return ellipsoid_sd(x, y, z, self.center, self.radii, self.rotation)

    def bounds(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box (lo, hi) of the ellipsoid (of its bounding sphere when rotated)."""
        r = self.radii if self.rotation is None else np.full(3, self.radii.max())
        return self.center - r - margin_mm, self.center + r + margin_mm

    def scaled(self, by_mm: float) -> Ellipsoid:
        """The ellipsoid with every radius changed by ``by_mm`` (negative shrinks)."""
        return replace(self, radii=np.maximum(self.radii + by_mm, 1.0))

    def contains(self, point: np.ndarray, fraction: float = 1.0) -> bool:
        """Whether ``point`` lies inside the ellipsoid shrunk to ``fraction`` of its radii."""
        d = np.asarray(point, float) - self.center
        if self.rotation is not None:
            d = self.rotation.T @ d
        return bool(np.sum((d / (self.radii * fraction)) ** 2) <= 1.0)


@dataclass(frozen=True)
class Capsule:
    """A tapered cylinder with round ends between points ``a`` and ``b`` (patient frame, mm)."""

    a: np.ndarray
    b: np.ndarray
    radius_a: float
    radius_b: float

    def sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm)."""
        return capsule_sd(x, y, z, self.a, self.b, self.radius_a, self.radius_b)

    def bounds(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box (lo, hi)."""
        r = max(self.radius_a, self.radius_b) + margin_mm
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def scaled(self, by_mm: float) -> Capsule:
        """The capsule with both radii changed by ``by_mm``."""
        return replace(
            self, radius_a=max(self.radius_a + by_mm, 0.5), radius_b=max(self.radius_b + by_mm, 0.5)
        )

    def point(self, t: float) -> np.ndarray:
        """Point at fraction ``t`` along the axis."""
        return self.a + t * (self.b - self.a)


Shape = Ellipsoid | Capsule | Profile


@dataclass(frozen=True)
class Anatomy:
    """One patient's body, fixed across scans (patient frame, mm; vertex at z = 0).

    Attributes:
        height_mm, weight_kg, sex, girth: body habitus (weight is estimated from height and girth).
        arms_up: arms raised above the head (else along the body).
        fov_z_mm: (inferior, superior) limits of the scanned range.
        fat_mm: subcutaneous fat thickness.
        body, thighs, head, face, arms: outer body surface pieces.
        thorax, abdomen: thoracic and abdominopelvic cavities.
        organs: named ellipsoids (brain, lungs, heart, liver, spleen, kidneys, bladder, ...).
        tubes: named capsule chains (spine, aorta, psoas, femurs, humeri, clavicles, ...).
    """

    height_mm: float
    weight_kg: float
    sex: str
    girth: float
    arms_up: bool
    fov_z_mm: tuple[float, float]
    fat_mm: float
    body: Profile
    thighs: tuple[Profile, Profile]
    head: Ellipsoid
    face: Ellipsoid
    arms: tuple[Capsule, ...]
    thorax: Profile
    abdomen: Profile
    organs: dict[str, Ellipsoid] = field(default_factory=dict)
    tubes: dict[str, tuple[Capsule, ...]] = field(default_factory=dict)

    def body_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame box of the scanned body (arms included, cut to the scanned z range)."""
        pieces: list[tuple[np.ndarray, np.ndarray]] = [self.body.bounds(), self.head.bounds()]
        pieces += [t.bounds() for t in self.thighs] + [a.bounds() for a in self.arms]
        lo = np.min([p[0] for p in pieces], axis=0)
        hi = np.max([p[1] for p in pieces], axis=0)
        lo[2], hi[2] = self.fov_z_mm
        return lo, hi


@dataclass(frozen=True)
class Physiology:
    """Physiologic SUV levels of one scan (they change between scans of the same patient)."""

    brain: float
    myocardium: float
    blood: float
    liver: float
    spleen: float
    kidney: float
    urine: float
    bladder: float
    stomach: float
    bowel: float
    muscle: float
    fat: float
    lung: float
    marrow: float
    salivary: float
    tonsil: float
    brown_fat: bool


def sample_anatomy(
    rng: np.random.Generator,
    height_m: tuple[float, float] = (1.55, 1.95),
    girth_range: tuple[float, float] = (0.85, 1.35),
    arms_up_probability: float = 0.6,
) -> Anatomy:
    """Draw one patient's anatomy: habitus, organ sizes and positions all vary."""
    height = float(rng.uniform(*height_m)) * 1000.0
    girth = float(rng.uniform(*girth_range))
    sex = "M" if rng.random() < 0.5 else "F"
    sh = height / _REF_HEIGHT_MM
    width = sh**0.7 * (1.0 if sex == "M" else 0.93) * rng.uniform(0.94, 1.06)
    hips = sh**0.7 * (1.0 if sex == "M" else 1.05) * rng.uniform(0.95, 1.05)

    def j(scale: float = 1.0) -> np.ndarray:
        """Random position jitter (mm)."""
        return rng.normal(0.0, 6.0 * scale, 3)

    def zf(f: float) -> float:
        return -f * height

    # --- outer body: neck ... crotch, knots in fractions of height from the vertex -----------
    f_knots = np.array(
        [0.115, 0.135, 0.165, 0.185, 0.205, 0.24, 0.29, 0.33, 0.37, 0.41, 0.45, 0.49, 0.52]
    )
    a_ref = np.array([52, 50, 56, 120, 175, 172, 166, 160, 150, 152, 168, 172, 158], float)
    b_ref = np.array([55, 52, 55, 88, 108, 116, 120, 118, 112, 112, 114, 108, 95], float)
    yc_ref = np.array([-5, -15, -20, -25, -20, -10, -5, 0, 5, 5, 0, -5, -5], float)
    girth_weight = np.array([0.3, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9, 1.1, 1.2, 1.0, 0.9, 0.8])
    hip_mix = np.clip((f_knots - 0.33) / 0.12, 0.0, 1.0)
    lateral = width * (1 - hip_mix) + hips * hip_mix
    a = a_ref * lateral * girth**girth_weight
    b = b_ref * sh**0.5 * girth ** (girth_weight * 1.3)
    order = np.argsort(-f_knots * height)  # increasing z
    z = np.array([zf(f) for f in f_knots])[order]
    body = Profile(z, a[order], b[order], (yc_ref * girth**0.5)[order])
    fat_mm = float(np.clip(6.0 + 14.0 * girth**3 * rng.uniform(0.7, 1.3), 5.0, 45.0))

    def body_at(f: float) -> tuple[float, float, float]:
        zz = zf(f)
        return (
            float(np.interp(zz, body.z, body.half_width)),
            float(np.interp(zz, body.z, body.half_depth)),
            float(np.interp(zz, body.z, body.center_y)),
        )

    # --- thighs -------------------------------------------------------------------------------
    a_hip, _, yc_hip = body_at(0.49)
    thigh_x = 0.5 * a_hip
    tf = np.array([0.75, 0.62, 0.53, 0.46])
    tr = np.array([64, 76, 88, 95], float) * hips * girth**0.8
    tz = np.array([zf(f) for f in tf])
    thighs = tuple(
        Profile(tz, tr, tr * 0.95, np.full(4, yc_hip - 5.0), center_x=float(s * thigh_x))
        for s in (1, -1)
    )

    # --- head ---------------------------------------------------------------------------------
    head_scale = rng.uniform(0.93, 1.07)
    head = Ellipsoid(
        np.array([0.0, 5.0, -0.063 * height]) + j(0.5),
        np.array([74.0, 94.0, 0.063 * height + 2.0]) * head_scale,
    )
    face = Ellipsoid(
        np.array([0.0, 30.0, zf(0.1)]) + j(0.5), np.array([52.0, 58.0, 55.0]) * head_scale
    )

    # --- arms ---------------------------------------------------------------------------------
    arms_up = bool(rng.random() < arms_up_probability)
    arm_r = 42.0 * girth**0.7 * width
    arms: list[Capsule] = []
    humeri: list[Capsule] = []
    a_sh, _, yc_sh = body_at(0.2)
    for s in (1, -1):
        shoulder = np.array([s * (a_sh - 0.45 * arm_r), yc_sh, zf(0.195)])
        if arms_up:
            elbow = np.array(
                [s * (a_sh + rng.uniform(-20, 25)), yc_sh + 10, zf(0.195) + 0.18 * height]
            )
            wrist = np.array([s * rng.uniform(40, 110), yc_sh + 20, elbow[2] + 0.15 * height])
        else:
            a_waist, _, _ = body_at(0.36)
            a_hips, _, _ = body_at(0.47)
            gap = rng.uniform(3, 25)
            elbow = np.array([s * (a_waist + arm_r + gap), yc_sh - 5, zf(0.375)])
            wrist = np.array([s * (a_hips + 0.8 * arm_r + gap), yc_sh + 15, zf(0.52)])
        hand = wrist + (wrist - elbow) * 0.35
        arms += [
            Capsule(shoulder, elbow, arm_r, 0.85 * arm_r),
            Capsule(elbow, wrist, 0.8 * arm_r, 0.6 * arm_r),
            Capsule(wrist, hand, 0.55 * arm_r, 0.45 * arm_r),
        ]
        humeri.append(Capsule(shoulder + (elbow - shoulder) * 0.05, elbow, 13.0, 10.0))

    # --- cavities -----------------------------------------------------------------------------
    thx_f = np.array([0.335, 0.30, 0.25, 0.21, 0.185])
    thorax = Profile(
        np.array([zf(f) for f in thx_f]),
        np.array([128, 133, 130, 100, 40.0]) * width * girth**0.25,
        np.array([92, 95, 90, 72, 38.0]) * sh**0.5 * girth**0.3,
        np.array([0, 0, -5, -10, -15.0]),
    )
    abd_f = np.array([0.49, 0.45, 0.41, 0.37, 0.335])
    abdomen = Profile(
        np.array([zf(f) for f in abd_f]),
        np.array([92, 118, 125, 125, 125.0]) * (0.5 * width + 0.5 * hips) * girth**0.9,
        np.array([56, 70, 76, 76, 76.0]) * sh**0.5 * girth**1.25,
        np.array([18, 26, 26, 20, 12.0]) * girth**0.5,
    )

    def cav_at(p: Profile, f: float) -> tuple[float, float, float]:
        zz = zf(f)
        return (
            float(np.interp(zz, p.z, p.half_width)),
            float(np.interp(zz, p.z, p.half_depth)),
            float(np.interp(zz, p.z, p.center_y)),
        )

    organs: dict[str, Ellipsoid] = {}
    tubes: dict[str, tuple[Capsule, ...]] = {}
    ta, tb, tyc = cav_at(thorax, 0.26)
    aa, ab, ayc = cav_at(abdomen, 0.38)
    size = lambda lo=0.85, hi=1.15: float(rng.uniform(lo, hi))  # noqa: E731

    # brain and head structures
    hc = head.center
    brain = Ellipsoid(hc + np.array([0, -4, 12]), head.radii * np.array([0.84, 0.86, 0.72]))
    organs["brain"] = brain
    organs["cerebellum"] = Ellipsoid(
        hc + np.array([0, -0.45 * head.radii[1], -0.42 * head.radii[2]]),
        np.array([0.62, 0.32, 0.26]) * head.radii,
    )
    for s, name in ((1, "r"), (-1, "l")):
        organs[f"basal_ganglia_{name}"] = Ellipsoid(
            brain.center + np.array([s * 22, 5, -8]), np.array([11, 18, 14.0])
        )
        organs[f"parotid_{name}"] = Ellipsoid(
            face.center + np.array([s * 48, -20, 15]) + j(0.3), np.array([12, 18, 22.0]) * size()
        )
        organs[f"tonsil_{name}"] = Ellipsoid(
            face.center + np.array([s * 14, -10, -8]) + j(0.2), np.array([7, 8, 11.0]) * size()
        )
    organs["ventricles"] = Ellipsoid(brain.center + np.array([0, 0, 0]), np.array([14, 30, 14.0]))
    organs["nasal"] = Ellipsoid(face.center + np.array([0, 40, 22]), np.array([12, 20, 18.0]))

    # thorax
    lung_z = 0.5 * (zf(0.185) + zf(0.335))
    lung_half = 0.5 * (zf(0.185) - zf(0.335)) + 12
    for s, name, side in ((1, "r", 1.0), (-1, "l", 0.93)):
        organs[f"lung_{name}"] = Ellipsoid(
            np.array([s * 0.56 * ta, tyc - 4, lung_z + (8 if s > 0 else 0)]) + j(0.4),
            np.array([0.45 * ta * side, 0.98 * tb, lung_half]) * size(0.95, 1.05),
        )
    heart_c = np.array([-0.16 * ta, tyc + 0.3 * tb, zf(0.292)]) + j()
    heart_s = size(0.88, 1.15)
    heart_rot = rotation_matrix(np.deg2rad([rng.uniform(-25, -10), 0, rng.uniform(20, 40)]))
    organs["heart"] = Ellipsoid(heart_c, np.array([62, 50, 60.0]) * heart_s, heart_rot)
    organs["lv"] = Ellipsoid(
        heart_c + heart_rot @ np.array([-14, -6, -6.0]) * heart_s,
        np.array([36, 34, 48.0]) * heart_s,
        heart_rot,
    )
    # vertebral bodies bulge into the posterior midline of the cavities (lungs lie beside them)
    spine_y_thx = tyc - tb + 12
    spine_y_abd = ayc - ab + 14
    _, _, neck_yc = body_at(0.15)
    spine_pts = [
        np.array([0, neck_yc - 10, zf(0.125)]),
        np.array([0, spine_y_thx + 10, zf(0.185)]),
        np.array([0, spine_y_thx, zf(0.26)]),
        np.array([0, spine_y_thx + 3, zf(0.335)]),
        np.array([0, spine_y_abd + 8, zf(0.40)]),
        np.array([0, spine_y_abd - 5, zf(0.445)]),
        np.array([0, spine_y_abd - 25, zf(0.48)]),
    ]
    radii = [9.0, 13.0, 16.0, 19.0, 23.0, 22.0, 14.0]
    tubes["spine"] = tuple(
        Capsule(spine_pts[i], spine_pts[i + 1], radii[i], radii[i + 1])
        for i in range(len(spine_pts) - 1)
    )
    aorta_pts = [
        heart_c + np.array([5, 5, 30.0]),
        np.array([-2, tyc + 0.25 * tb, zf(0.225)]),
        np.array([-18, tyc - 0.1 * tb, zf(0.21)]),
        np.array([-22, spine_y_thx + 28, zf(0.235)]),
        np.array([-18, spine_y_thx + 30, zf(0.335)]),
        np.array([-10, spine_y_abd + 38, zf(0.43)]),
    ]
    ra = 13.0 * size(0.9, 1.2)
    tubes["aorta"] = tuple(
        Capsule(aorta_pts[i], aorta_pts[i + 1], ra, ra * (0.85 if i == 4 else 1.0))
        for i in range(len(aorta_pts) - 1)
    )
    tubes["sternum"] = (
        Capsule(
            np.array([0, tyc + tb + 8, zf(0.2)]), np.array([0, tyc + tb + 12, zf(0.31)]), 11.0, 9.0
        ),
    )
    for s, name in ((1, "r"), (-1, "l")):
        tubes[f"clavicle_{name}"] = (
            Capsule(
                np.array([s * 18, yc_sh + 55, zf(0.19)]),
                np.array([s * (a_sh - 30), yc_sh + 5, zf(0.188)]),
                8.0,
                7.0,
            ),
        )
        organs[f"scapula_{name}"] = Ellipsoid(
            np.array([s * 0.62 * ta, tyc - tb - 22, zf(0.245)]),
            np.array([50, 9, 70.0]) * width,
            rotation_matrix((0.0, 0.0, s * 0.35)),
        )

    # abdomen and pelvis
    liver_s = size(0.85, 1.2)
    organs["liver"] = Ellipsoid(
        np.array([0.38 * aa, ayc + 0.02 * ab, zf(0.362)]) + j(),
        np.array([0.56 * aa, 0.8 * ab, 0.05 * height]) * liver_s,
        rotation_matrix((0.0, 0.0, np.deg2rad(rng.uniform(-10, 10)))),
    )
    organs["liver_inferior"] = Ellipsoid(  # the right lobe tapers down towards the kidney
        organs["liver"].center + np.array([0.12 * aa, -0.1 * ab, -0.035 * height]),
        np.array([0.32 * aa, 0.55 * ab, 0.035 * height]) * liver_s * size(0.8, 1.2),
    )
    organs["liver_left"] = Ellipsoid(
        np.array([-0.08 * aa, ayc + 0.42 * ab, zf(0.35)]) + j(),
        np.array([0.5 * aa, 0.4 * ab, 0.025 * height]) * liver_s,
    )
    organs["spleen"] = Ellipsoid(
        np.array([-0.66 * aa, ayc - 0.42 * ab, zf(0.35)]) + j(),
        np.array([30, 50, 55.0]) * size(0.8, 1.3),
        rotation_matrix((0.0, 0.0, np.deg2rad(-30))),
    )
    organs["stomach"] = Ellipsoid(
        np.array([-0.3 * aa, ayc + 0.3 * ab, zf(0.345)]) + j(),
        np.array([45, 30, 50.0]) * size(),
        rotation_matrix((0.0, np.deg2rad(25), 0.0)),
    )
    for s, name, dz in ((1, "r", -12.0), (-1, "l", 0.0)):
        kc = np.array([s * 0.42 * aa, spine_y_abd + 18, zf(0.395) + dz]) + j(0.7)
        ks = size(0.88, 1.12)
        krot = rotation_matrix((0.0, np.deg2rad(s * 12), 0.0))
        organs[f"kidney_{name}"] = Ellipsoid(kc, np.array([27, 27, 55.0]) * ks, krot)
        organs[f"renal_pelvis_{name}"] = Ellipsoid(
            kc + np.array([-s * 8, 4, 0]), np.array([9, 11, 24.0]) * ks * size(0.7, 1.3), krot
        )
        tubes[f"psoas_{name}"] = (
            Capsule(
                np.array([s * 32, spine_y_abd + 5, zf(0.37)]),
                np.array([s * 0.42 * a_hip, spine_y_abd + 45, zf(0.49)]),
                12.0,
                22.0 * girth**0.3,
            ),
        )
        organs[f"iliac_{name}"] = Ellipsoid(
            np.array([s * 0.58 * a_hip * 0.95, spine_y_abd + 20, zf(0.447)]),
            np.array([16, 50, 55.0]) * hips,
            rotation_matrix((0.0, 0.0, -s * 0.5)),
        )
        head_c = np.array([s * 0.5 * a_hip, yc_hip + 5, zf(0.49)])
        organs[f"femoral_head_{name}"] = Ellipsoid(head_c, np.full(3, 24.0) * hips)
        tubes[f"femur_{name}"] = (
            Capsule(head_c, np.array([s * thigh_x, yc_hip - 5, zf(0.78)]), 16.0, 13.0),
        )
    for k, h in enumerate(humeri):
        tubes[f"humerus_{k}"] = (h,)
    fill = size(0.6, 1.3)
    organs["bladder"] = Ellipsoid(
        np.array([0, abdomen.center_y[0] + 20, zf(0.487)]) + j(0.5),
        np.array([38, 32, 30.0]) * fill,
    )

    weight = 72.0 * (height / _REF_HEIGHT_MM) ** 2 * girth**1.7 * (1.0 if sex == "M" else 0.88)
    z_hi = float(rng.uniform(10.0, 40.0))
    z_lo = zf(float(rng.uniform(0.6, 0.66)))
    return Anatomy(
        height_mm=height,
        weight_kg=round(float(weight), 1),
        sex=sex,
        girth=girth,
        arms_up=arms_up,
        fov_z_mm=(z_lo, z_hi),
        fat_mm=fat_mm,
        body=body,
        thighs=thighs,  # type: ignore[arg-type]
        head=head,
        face=face,
        arms=tuple(arms),
        thorax=thorax,
        abdomen=abdomen,
        organs=organs,
        tubes=tubes,
    )


def sample_physiology(
    rng: np.random.Generator,
    previous: Physiology | None = None,
    brown_fat_probability: float = 0.0,
    myocardium_suv: tuple[float, float] = (2.0, 8.0),
    config: PhantomConfig | None = None,
) -> Physiology:
    """Draw one scan's physiologic uptake; with ``previous``, a re-scan of the same patient.

    Patient-level levels (brain, liver, marrow, ...) vary by about +-10% between scans;
    myocardium, urine/bladder, stomach and bowel uptake are drawn afresh (fasting, hydration
    and peristalsis change them from one scan to the next). ``config`` gives every range
    (its ``brown_fat_probability`` and ``myocardium_suv`` win over the arguments); without
    it, the default ranges with the two arguments. The number and order of draws never
    depend on the ranges, so equal ranges give equal levels.
    """
    if config is None:
        config = PhantomConfig(
            brown_fat_probability=brown_fat_probability, myocardium_suv=myocardium_suv
        )
    c = config

    def jitter(value: float, spread: float = 0.1) -> float:
        return float(value * rng.uniform(1.0 - spread, 1.0 + spread))

    def loguniform(low_high: tuple[float, float]) -> float:
        return float(np.exp(rng.uniform(np.log(low_high[0]), np.log(low_high[1]))))

    fasted = rng.random() < c.myocardium_fasted_probability
    myocardium = float(rng.uniform(0.8, 2.0) if fasted else rng.uniform(*c.myocardium_suv))
    urine = loguniform(c.urine_suv)
    fresh = {
        "myocardium": myocardium,
        "urine": urine,
        "bladder": loguniform(c.bladder_suv),
        "stomach": float(rng.uniform(1.2, 3.5)),
        "bowel": float(rng.uniform(*c.bowel_suv)),
        "brown_fat": bool(rng.random() < c.brown_fat_probability),
    }
    if previous is None:
        liver = float(rng.uniform(1.8, 3.0))
        return Physiology(
            brain=float(rng.uniform(*c.brain_suv)),
            blood=float(rng.uniform(1.4, 2.1)),
            liver=liver,
            spleen=liver * float(rng.uniform(0.75, 0.9)),
            kidney=float(rng.uniform(*c.kidney_suv)),
            muscle=float(rng.uniform(0.6, 0.9)),
            fat=float(rng.uniform(0.25, 0.4)),
            lung=float(rng.uniform(0.3, 0.6)),
            marrow=float(rng.uniform(1.1, 2.0)),
            salivary=float(rng.uniform(*c.salivary_suv)),
            tonsil=float(rng.uniform(*c.tonsil_suv)),
            **fresh,  # type: ignore[arg-type]
        )
    return replace(
        previous,
        brain=jitter(previous.brain),
        blood=jitter(previous.blood),
        liver=jitter(previous.liver),
        spleen=jitter(previous.spleen),
        kidney=jitter(previous.kidney),
        muscle=jitter(previous.muscle),
        fat=jitter(previous.fat),
        lung=jitter(previous.lung),
        marrow=jitter(previous.marrow),
        salivary=jitter(previous.salivary),
        tonsil=jitter(previous.tonsil),
        **fresh,  # type: ignore[arg-type]
    )


def draw_shape(
    canvas: Canvas,
    shape: Shape,
    suv: float | None,
    hu: float | None,
    *,
    texture: tuple[float, float, float] | None = None,
    margin_mm: float = 4.0,
    clip: Shape | None = None,
    organ: str | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Paint one shape; ``texture`` = (correlation_mm, suv_rel_sd, hu_sd) adds organ texture.

    ``organ`` (one of ``petflare.constants.ORGANS``) labels it in the canvas' organ map;
    ``rng`` draws the texture from another stream than the canvas'.
    """
    lo, hi = shape.bounds() if isinstance(shape, Profile) else shape.bounds()
    sl = canvas.box(lo - margin_mm, hi + margin_mm)
    if sl is None:
        return None
    x, y, z = canvas.body_coords(sl)
    occ = canvas.occupancy(shape.sd(x, y, z))
    if clip is not None:
        occ = np.minimum(occ, canvas.occupancy(clip.sd(x, y, z)))
    if not occ.any():
        return None
    suv_v: float | np.ndarray | None = suv
    hu_v: float | np.ndarray | None = hu
    if texture is not None:
        corr, rel, hu_sd = texture
        tex = canvas.texture(sl, corr, rng)
        if suv is not None:
            suv_v = suv * np.clip(1.0 + rel * tex, 0.2, 3.0)
        if hu is not None:
            hu_v = hu + hu_sd * tex
    canvas.paint(sl, occ, suv_v, hu_v, organ=organ)
    return sl, occ


def render_anatomy(
    canvas: Canvas,
    anatomy: Anatomy,
    phys: Physiology,
    brown_fat_suv: tuple[float, float] = (2.0, 5.0),
) -> None:
    """Paint the patient's body into ``canvas``.

    Body and organ shapes are evaluated at ``canvas.body_coords`` (the canvas' smooth organ
    deformation, when it has one); the scanner couch is not deformed.

    The liver is painted as tissue ``"liver"``: with a canvas that tracks it, its fraction map
    (``canvas.fractions["liver"]``) says which voxels still show liver after everything else.
    """
    a, o, t = anatomy, anatomy.organs, anatomy.tubes
    rng = canvas.rng
    # couch under the patient (scanner table: attenuates, no activity)
    lo, hi = a.body_bounds()
    y_back = float(lo[1])
    sl = canvas.geometry.box(
        np.array([-230.0, y_back - 45, lo[2]]), np.array([230.0, y_back - 5, hi[2]])
    )
    if sl is not None:
        x, y, _ = canvas.coords(sl)
        couch = np.maximum(np.abs(x) - 225.0, np.abs(y - (y_back - 22)) - 7.0 - 0.0003 * x * x)
        canvas.paint(sl, canvas.occupancy(couch), 0.0, 120.0)

    # skin/fat envelope with muscle underneath (one distance evaluation per body piece)
    fat = a.fat_mm
    pieces: list[tuple[Shape, float]] = [
        (a.body, fat),
        *((p, 0.8 * fat) for p in a.thighs),
        *((c, 0.6 * fat) for c in a.arms),
        (a.head, 4.0),
        (a.face, 4.0),
    ]
    for shape, inset in pieces:
        lo, hi = shape.bounds()
        sl = canvas.box(lo - 4.0, hi + 4.0)
        if sl is None:
            continue
        sd = shape.sd(*canvas.body_coords(sl))
        tex = canvas.texture(sl, 6.0)
        canvas.paint(sl, canvas.occupancy(sd), phys.fat * (1.0 + 0.15 * tex), -100.0 + 12.0 * tex)
        canvas.paint(
            sl, canvas.occupancy(sd + inset), phys.muscle * (1.0 + 0.12 * tex), 45.0 + 8.0 * tex
        )

    # cavities: mediastinal soft tissue, abdominal visceral fat and bowel
    draw_shape(canvas, a.thorax, 0.5 * (phys.blood + phys.muscle), 20.0, texture=(8.0, 0.1, 10.0))
    draw_shape(canvas, a.abdomen, phys.fat * 1.2, -90.0, texture=(6.0, 0.15, 10.0))
    _paint_bowel(canvas, a, phys)
    for name in ("lung_r", "lung_l"):
        draw_shape(canvas, o[name], phys.lung, -850.0, texture=(7.0, 0.18, 35.0), clip=a.thorax)
    draw_shape(canvas, o["heart"], phys.blood, 40.0)
    lv, lv_cavity = o["lv"], o["lv"].scaled(-10.0)
    sl = canvas.box(*lv.bounds(4.0))
    if sl is not None:
        x, y, z = canvas.body_coords(sl)
        wall = np.clip(
            canvas.occupancy(lv.sd(x, y, z)) - canvas.occupancy(lv_cavity.sd(x, y, z)), 0, 1
        )
        tex = canvas.texture(sl, 8.0)
        canvas.paint(
            sl, wall, phys.myocardium * np.clip(1 + 0.12 * tex, 0.5, 2), 45.0, organ="myocardium"
        )
    for cap in t["aorta"]:
        draw_shape(canvas, cap, phys.blood, 40.0)
    for name in ("psoas_r", "psoas_l"):
        draw_shape(canvas, t[name][0], phys.muscle * 1.1, 45.0, texture=(8.0, 0.1, 6.0))

    # solid organs
    _paint_liver(canvas, a, phys)
    draw_shape(canvas, o["spleen"], phys.spleen, 45.0, texture=(10.0, 0.06, 4.0))
    draw_shape(canvas, o["stomach"], phys.stomach, 30.0, texture=(6.0, 0.25, 8.0), organ="bowel")
    draw_shape(
        canvas,
        o["stomach"].scaled(-7.0),
        phys.stomach * 0.4,
        -300.0 if rng.random() < 0.5 else 10.0,
    )
    for s in ("r", "l"):
        draw_shape(
            canvas, o[f"kidney_{s}"], phys.kidney, 35.0, texture=(5.0, 0.15, 5.0), organ="kidney"
        )
        draw_shape(canvas, o[f"renal_pelvis_{s}"], phys.urine, 10.0, organ="kidney")
    draw_shape(canvas, o["bladder"], phys.bladder, 8.0, organ="bladder")

    # skeleton: cortical shell (HU high, little uptake) with marrow inside
    _bone(canvas, o["scapula_r"], o["scapula_l"], marrow_suv=phys.marrow * 0.6)
    for name in ("spine", "sternum", "clavicle_r", "clavicle_l"):
        for cap in t[name]:
            axial = name in ("spine", "sternum")  # red marrow; clavicles carry little
            _bone(canvas, cap, marrow_suv=phys.marrow * (1.0 if axial else 0.4))
    _paint_ribs(canvas, a, phys)
    _bone(canvas, o["iliac_r"], o["iliac_l"], marrow_suv=phys.marrow * 0.9)
    _bone(canvas, o["femoral_head_r"], o["femoral_head_l"], marrow_suv=phys.marrow * 0.7)
    for name in ("femur_r", "femur_l", "humerus_0", "humerus_1"):
        _bone(canvas, t[name][0], marrow_suv=phys.marrow * 0.45, shell_mm=4.0)

    # head: skull, brain (grey-matter rim hotter than white matter), glands
    draw_shape(canvas, a.head.scaled(-5.0), 0.5, 900.0, texture=(6.0, 0.1, 100.0))
    _paint_brain(canvas, a, phys)
    draw_shape(canvas, o["nasal"], 0.3, -700.0)
    for s in ("r", "l"):
        draw_shape(
            canvas,
            o[f"parotid_{s}"],
            phys.salivary,
            30.0,
            texture=(5.0, 0.1, 5.0),
            organ="head_neck",
        )
        draw_shape(canvas, o[f"tonsil_{s}"], phys.tonsil, 40.0, organ="head_neck")
    if phys.brown_fat:
        _paint_brown_fat(canvas, a, brown_fat_suv)


#: Liver uptake heterogeneity (relative SD of SUV, correlation length as Gaussian sigma in mm).
#: Real FDG livers are homogeneous at large scale: a 3 cm sphere is reproducible within 10-20%
#: between scans (PERCIST) and regional differences are a few percent, while the voxel-level
#: variation of a liver VOI (CoV ~10-20%) is mostly reconstruction noise (added in imaging).
LIVER_BROAD_TEXTURE = (25.0, 0.025)  # lobar/segmental differences: a 3 cm sphere varies ~2%
LIVER_FINE_TEXTURE = (5.0, 0.04)  # parenchymal texture near the PET resolution
LIVER_HU = 58.0


def _paint_liver(canvas: Canvas, a: Anatomy, phys: Physiology) -> None:
    """The liver as one organ: union of its three lobes with one continuous texture field.

    Painting the lobes one by one with a texture each would put seams and independent
    uptake levels where they overlap; one field over the union keeps the organ continuous.
    """
    lobes = [a.organs[name] for name in ("liver", "liver_left", "liver_inferior")]
    lo = np.min([lobe.bounds()[0] for lobe in lobes], axis=0) - 4.0
    hi = np.max([lobe.bounds()[1] for lobe in lobes], axis=0) + 4.0
    sl = canvas.box(lo, hi)
    if sl is None:
        return
    x, y, z = canvas.body_coords(sl)
    sd = lobes[0].sd(x, y, z)
    for lobe in lobes[1:]:
        np.minimum(sd, lobe.sd(x, y, z), out=sd)  # union of the lobes
    occ = canvas.occupancy(sd)
    if not occ.any():
        return
    broad = canvas.texture(sl, LIVER_BROAD_TEXTURE[0])
    fine = canvas.texture(sl, LIVER_FINE_TEXTURE[0])
    rel = 1.0 + LIVER_BROAD_TEXTURE[1] * broad + LIVER_FINE_TEXTURE[1] * fine
    canvas.paint(sl, occ, phys.liver * rel, LIVER_HU + 5.0 * fine, tissue="liver", organ="liver")


def _bone(
    canvas: Canvas, *shapes: Ellipsoid | Capsule, marrow_suv: float, shell_mm: float = 3.0
) -> None:
    """Cortical bone shell (HU ~900, low uptake) filled with cancellous marrow (HU ~250)."""
    for shape in shapes:
        draw_shape(canvas, shape, 0.6, 900.0, texture=(6.0, 0.05, 80.0))
        draw_shape(canvas, shape.scaled(-shell_mm), marrow_suv, 260.0, texture=(6.0, 0.12, 40.0))


def _paint_bowel(canvas: Canvas, a: Anatomy, phys: Physiology) -> None:
    """Bowel loops in the abdominopelvic cavity: tubes of variable uptake, some gas."""
    lo, hi = a.abdomen.bounds()
    sl = canvas.box(lo, hi)
    if sl is None:
        return
    x, y, z = canvas.body_coords(sl)
    cavity = canvas.occupancy(a.abdomen.shrunk(4.0).sd(x, y, z))
    loops = canvas.texture(sl, 7.0)
    wall = np.clip(1.3 - np.abs(loops) / 0.7, 0.0, 1.0)  # thick tube-like level sets
    activity = canvas.texture(sl, 25.0)
    hot = np.clip(0.75 + 0.45 * activity, 0.3, 2.5)
    occ = cavity * wall
    gas = (canvas.texture(sl, 10.0) > 1.3) & (np.abs(loops) < 0.2)
    hu = np.where(gas, -800.0, 25.0).astype(np.float32)
    canvas.paint(sl, occ, phys.bowel * hot, hu, organ="bowel")


def _paint_ribs(canvas: Canvas, a: Anatomy, phys: Physiology) -> None:
    """Rib cage: oblique bony bands in a shell just outside the thoracic cavity."""
    lo, hi = a.thorax.bounds()
    sl = canvas.box(lo - 20.0, hi + 20.0)
    if sl is None:
        return
    x, y, z = canvas.body_coords(sl)
    sd = a.thorax.sd_inplane(x, y, z)
    ribs_z = (z < a.thorax.z[-1] - 10.0) & (z > a.thorax.z[0] + 10.0)
    shell = np.clip(1.0 - np.abs(sd - 7.0) / 6.0, 0.0, 1.0)
    period = 0.021 * a.height_mm
    bands = np.clip((np.cos(2 * np.pi * (z - 0.35 * y) / period) - 0.2) * 2.0, 0.0, 1.0)
    occ = (shell * bands * ribs_z).astype(np.float32)
    canvas.paint(sl, occ, phys.marrow * 0.6, 500.0)


def _paint_brain(canvas: Canvas, a: Anatomy, phys: Physiology) -> None:
    """Brain: white matter ~0.45 x grey matter; a gyral cortical ribbon; cerebellum, deep nuclei."""
    o = a.organs
    brain = o["brain"]
    sl = canvas.box(*brain.bounds(4.0))
    if sl is not None:
        x, y, z = canvas.body_coords(sl)
        sd = brain.sd(x, y, z)
        occ = canvas.occupancy(sd)
        gyri = canvas.texture(sl, 3.0)
        ribbon = np.clip(1.0 - (-sd - 1.0) / 12.0, 0.0, 1.0) * np.clip(0.7 + 0.5 * gyri, 0, 1)
        grey = np.clip(ribbon, 0.0, 1.0)
        suv = phys.brain * (0.42 + 0.58 * grey)
        canvas.paint(sl, occ, suv, 35.0 + 8.0 * grey, organ="brain")
    draw_shape(
        canvas, o["cerebellum"], phys.brain * 0.7, 38.0, texture=(3.0, 0.15, 4.0), organ="brain"
    )
    for s in ("r", "l"):
        draw_shape(canvas, o[f"basal_ganglia_{s}"], phys.brain * 0.85, 40.0, organ="brain")
    draw_shape(canvas, o["ventricles"], 0.4, 8.0, organ="brain")


def _paint_brown_fat(canvas: Canvas, a: Anatomy, suv: tuple[float, float]) -> None:
    """Activated brown fat: symmetric, patchy supraclavicular/cervical uptake (a distractor)."""
    rng = canvas.rng
    level = float(rng.uniform(*suv))
    for s in (1, -1):
        clavicle = a.tubes["clavicle_r" if s > 0 else "clavicle_l"][0]
        band = Capsule(
            clavicle.point(0.2) + np.array([0.0, -20.0, 35.0]),
            clavicle.point(0.85) + np.array([0.0, -30.0, 10.0]),
            14.0,
            10.0,
        )
        lo, hi = band.bounds(4.0)
        sl = canvas.box(lo, hi)
        if sl is None:
            continue
        occ = canvas.occupancy(band.sd(*canvas.body_coords(sl)))
        patches = np.clip(canvas.texture(sl, 5.0), 0.0, None)  # patchy, not a solid blob
        canvas.paint(
            sl,
            occ * np.clip(patches, 0.0, 1.0),
            level * (0.6 + 0.4 * patches),
            -70.0,
            organ="other_physiological",
        )
