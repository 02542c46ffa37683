"""Longitudinal scenarios: baseline disease and its evolution under one of the four patterns.

Rules (``thr`` = ``avid_liver_ratio`` x true liver SUVmean of the scan; a lesion is FDG-avid,
and in that scan's lesion mask, when its viable-tissue SUV >= thr):

- Baseline lesions are *active* (SUV from max(1.25 thr, 3.5) to 20) or *responding* already
  (SUV 0.6-1.5 thr, hypodense; about half of those are below thr, so absent from the mask).
- Follow-up changes of known lesions: ``respond`` (uptake falls below thr, CT density falls to
  12-25 HU, size kept in half the cases, as GIST on imatinib), ``partial`` (uptake x0.45-0.75),
  ``stable`` (uptake x0.88-1.10, size x0.96-1.05). None of these rises by more than 10%.
- ``controlled``: every lesion responds, partially responds or stays stable (and avid): no rise,
  nothing new.
- ``diffuse_flare``: a majority (>50%, not always all) of the lesions ``flare``: uptake returns
  across the whole volume (SUV >= 1.5x baseline and >= 1.4 thr, the necrotic core shrinks, the
  texture evens out); the others behave as in ``controlled``; sometimes one small new site.
- ``nodule_within_mass``: one mass >= 3.5 cm responds (non-avid, hypodense) but a focal hot
  nodule of 8-22 mm (SUV 1.3-3 thr, within 4.5-14: often modest) appears inside it; nothing else
  rises or appears.
- ``new_lesions``: 1-3 small (8-30 mm) avid lesions at previously uninvolved sites (other
  organs, or >= 3 cm from every known lesion); known lesions as in ``controlled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from petflare.constants import PATTERNS
from petflare.synth.anatomy import Anatomy
from petflare.synth.config import PhantomConfig
from petflare.synth.lesions import (
    SITE_DIAMETER_MM,
    SITES,
    Lesion,
    LesionState,
    Nodule,
    make_lesion,
    sample_site_center,
    surface_radius,
)

#: Every lesion change label a scenario can assign.
CHANGES: tuple[str, ...] = ("respond", "partial", "stable", "flare", "nodule", "new")

#: Diameter range of the hot nodule of ``nodule_within_mass`` (Shankar 2005: 2 mm-1.4 cm at
#: onset, growing to ~2 cm; below ~8 mm it is invisible at whole-body PET resolution).
NODULE_DIAMETER_MM: tuple[float, float] = (8.0, 22.0)

#: Nodule SUV range as multiples of the avidity threshold (then clipped to 4.5-14).
NODULE_SUV: tuple[float, float] = (1.3, 3.0)

#: Largest uptake ratio follow-up / baseline of a lesion that does not progress.
MAX_STABLE_RATIO = 1.10


@dataclass
class Scenario:
    """Lesions of one patient and their states at both timepoints.

    ``baseline`` / ``followup`` map lesion id -> state for lesions existing at that time.
    """

    pattern: str
    lesions: dict[int, Lesion]
    baseline: dict[int, LesionState]
    followup: dict[int, LesionState]
    change: dict[int, str] = field(default_factory=dict)

    @property
    def new_ids(self) -> list[int]:
        """Lesions absent at baseline."""
        return sorted(i for i in self.followup if i not in self.baseline)


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _baseline_state(rng: np.random.Generator, lesion: Lesion, thr: float) -> LesionState:
    """Active or already-responding appearance at baseline."""
    big = lesion.diameter_mm > 35
    necrosis = float(rng.uniform(0.35, 0.7)) if big and rng.random() < 0.75 else 0.0
    hu_active = 38.0 if lesion.site == "liver" else 45.0
    if rng.random() < 0.6:
        return LesionState(
            scale=1.0,
            suv=_loguniform(rng, max(1.25 * thr, 3.5), 20.0),
            heterogeneity=float(rng.uniform(0.1, 0.3)),
            necrosis=necrosis,
            hu=hu_active + float(rng.uniform(-8, 10)),
        )
    return LesionState(
        scale=1.0,
        suv=float(rng.uniform(0.6, 1.5)) * thr,
        heterogeneity=float(rng.uniform(0.15, 0.35)),
        necrosis=necrosis,
        hu=float(rng.uniform(18, 32)),
    )


def _controlled_change(
    rng: np.random.Generator, state: LesionState, thr: float, kind: str | None = None
) -> tuple[str, LesionState]:
    """Respond / partial / stable follow-up state (never a rise above MAX_STABLE_RATIO)."""
    kind = kind or str(rng.choice(["respond", "partial", "stable"], p=[0.45, 0.25, 0.30]))
    if kind == "respond":
        keeps_size = rng.random() < 0.5
        new = replace(
            state,
            scale=float(rng.uniform(0.94, 1.02) if keeps_size else rng.uniform(0.6, 0.94)),
            suv=min(float(rng.uniform(0.3, 0.85)) * thr, 0.9 * state.suv),
            necrosis=min(0.85, state.necrosis + float(rng.uniform(0.0, 0.2)))
            if state.necrosis
            else 0.0,
            hu=float(rng.uniform(12, 25)),
        )
    elif kind == "partial":
        new = replace(
            state,
            scale=float(rng.uniform(0.8, 1.0)),
            suv=state.suv * float(rng.uniform(0.45, 0.75)),
            hu=max(12.0, state.hu - float(rng.uniform(5, 15))),
        )
    else:
        new = replace(
            state,
            scale=float(rng.uniform(0.96, 1.05)),
            suv=state.suv * float(rng.uniform(0.88, MAX_STABLE_RATIO)),
            hu=state.hu + float(rng.uniform(-5, 3)),
        )
    return kind, new


def _flare_change(rng: np.random.Generator, state: LesionState, thr: float) -> LesionState:
    """Diffuse return of uptake through the whole lesion."""
    return replace(
        state,
        scale=float(rng.uniform(1.0, 1.12)),
        suv=float(min(max(state.suv * rng.uniform(1.5, 2.5), rng.uniform(1.4, 2.8) * thr), 32.0)),
        heterogeneity=float(rng.uniform(0.06, 0.14)),
        necrosis=state.necrosis * float(rng.uniform(0.1, 0.45)),
        hu=state.hu + float(rng.uniform(0, 12)),
    )


def _add_new_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    scenario: Scenario,
    n_new: int,
    thr: float,
    diameter_mm: tuple[float, float],
) -> None:
    """Add ``n_new`` avid lesions at sites uninvolved at baseline (>= 3 cm from known ones)."""
    involved = {scenario.lesions[i].site for i in scenario.baseline}
    free = [s for s in SITES if s not in involved] or list(SITES)
    next_id = max(scenario.lesions) + 1
    for _ in range(n_new):
        avoid = [(les.center_mm, float(les.radii_mm.max())) for les in scenario.lesions.values()]
        for _try in range(10):
            site = str(rng.choice(free))
            d = _loguniform(rng, *diameter_mm)
            c = sample_site_center(rng, anatomy, site, d, avoid, gap_mm=30.0)
            if c is not None:
                break
        else:
            continue
        lesion = make_lesion(rng, next_id, site, c, d)
        scenario.lesions[next_id] = lesion
        scenario.followup[next_id] = LesionState(
            scale=1.0,
            suv=float(min(rng.uniform(1.15, 3.0) * thr, 15.0)),
            heterogeneity=float(rng.uniform(0.05, 0.2)),
            necrosis=0.0,
            hu=float(rng.uniform(35, 50)),
        )
        scenario.change[next_id] = "new"
        next_id += 1


def _place_nodule(
    rng: np.random.Generator, lesion: Lesion, state: LesionState, thr: float
) -> Nodule:
    """A hot nodule (``NODULE_DIAMETER_MM``) well inside the host, random direction and depth.

    Its SUV is ``NODULE_SUV`` (relative to ``thr``, at least 4.5) so that a careful reader can
    see it, though often only modestly after blur.
    """
    radii = lesion.radii_mm * state.scale
    diameter = _loguniform(rng, *NODULE_DIAMETER_MM)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(30):
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)  # direction in the host's local frame (mm)
        v = u / radii
        unit = v / np.linalg.norm(v)
        surface = surface_radius(lesion, *(np.array([c]) for c in unit))[0]
        reach_mm = float(surface / np.linalg.norm(v))  # centre-to-surface distance along u
        if best is None or reach_mm > best[0]:
            best = (reach_mm, u)
        if 0.4 * reach_mm >= 0.5 * diameter:
            break
    assert best is not None
    reach_mm, u = best
    radius = max(min(0.5 * diameter, 0.4 * reach_mm), 0.5 * NODULE_DIAMETER_MM[0])
    depth = float(rng.uniform(0.0, max(0.0, 0.7 * reach_mm - radius)))
    low, high = NODULE_SUV
    return Nodule(
        offset=u * depth / radii,
        radius_mm=float(radius),
        suv=float(np.clip(rng.uniform(low, high) * thr, 4.5, 14.0)),
    )


def build_scenario(
    rng: np.random.Generator,
    anatomy: Anatomy,
    pattern: str,
    config: PhantomConfig,
    threshold_baseline: float,
    threshold_followup: float,
) -> Scenario:
    """Draw the baseline lesions and evolve them into the follow-up according to ``pattern``."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    thr_b, thr_f = threshold_baseline, threshold_followup
    lo_n, hi_n = config.n_baseline_lesions
    n = int(rng.integers(lo_n, hi_n + 1))
    lesions: dict[int, Lesion] = {}
    avoid: list[tuple[np.ndarray, float]] = []
    max_d = config.max_lesion_diameter_mm
    site_p = np.array([0.35, 0.3, 0.12, 0.1, 0.13])
    for k in range(n):
        # the first lesion is always an abdominal mass >= 3.5 cm (GIST primary / peritoneal bulk)
        site = "peritoneal" if k == 0 else str(rng.choice(SITES, p=site_p))
        lo_d, hi_d = SITE_DIAMETER_MM[site]
        if k == 0:
            lo_d = 35.0
        d = _loguniform(rng, min(lo_d, max_d), min(hi_d, max_d))
        for _try in range(5):
            c = sample_site_center(rng, anatomy, site, d, avoid)
            if c is not None:
                break
            d *= 0.8
        if c is None:
            continue
        lid = len(lesions) + 1
        lesions[lid] = make_lesion(rng, lid, site, c, d)
        avoid.append((c, 0.5 * d * 1.3))
    if not lesions:  # pragma: no cover - the abdomen always has room for one mass
        raise RuntimeError("could not place any lesion")

    baseline = {i: _baseline_state(rng, les, thr_b) for i, les in lesions.items()}
    sc = Scenario(pattern, lesions, baseline, {})
    ids = list(lesions)

    if pattern == "diffuse_flare":
        n_flare = int(np.clip(round(rng.uniform(0.6, 1.0) * len(ids)), len(ids) // 2 + 1, len(ids)))
        flared = set(rng.choice(ids, size=n_flare, replace=False).tolist())
        for i in ids:
            if i in flared:
                sc.followup[i], sc.change[i] = _flare_change(rng, baseline[i], thr_f), "flare"
            else:
                sc.change[i], sc.followup[i] = _controlled_change(rng, baseline[i], thr_f)
        if rng.random() < 0.3:
            _add_new_lesions(rng, anatomy, sc, 1, thr_f, (8.0, 15.0))
        return sc

    host = None
    if pattern == "nodule_within_mass":
        hosts = [
            i
            for i in ids
            if lesions[i].diameter_mm >= 35 and lesions[i].site in ("peritoneal", "liver")
        ]
        host = int(rng.choice(hosts))
    for i in ids:
        kind = "respond" if i == host else None
        sc.change[i], sc.followup[i] = _controlled_change(rng, baseline[i], thr_f, kind)
    if host is not None:
        les = lesions[host]
        state = sc.followup[host]
        nodule = _place_nodule(rng, les, state, thr_f)
        sc.followup[host] = replace(state, nodule=nodule)
        sc.change[host] = "nodule"
    if pattern == "new_lesions":
        n_new = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        _add_new_lesions(rng, anatomy, sc, n_new, thr_f, (8.0, 30.0))
        if not sc.new_ids:  # pragma: no cover - always room somewhere
            raise RuntimeError("could not place a new lesion")
    return sc
