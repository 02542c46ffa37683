"""PERCIST 1.0, EORTC 1999 and Choi categories at their boundaries."""

from __future__ import annotations

import pytest
from quant_phantoms import lesion, scan

from petflare.quant.criteria import choi, eortc, percist


def _percist(b_peak, f_peak, *, new=0, f_volume=10.0, liver=(1.0, 0.1), sul=None):
    b = scan([lesion(1, b_peak, sul_factor=sul)], liver=liver, sul_factor=sul)
    f_les = [lesion(1, f_peak, volume_ml=f_volume, sul_factor=sul)] if f_peak else []
    f = scan(f_les, liver=liver, sul_factor=sul)
    return percist(b, f, new)


@pytest.mark.parametrize(
    ("b_peak", "f_peak", "expected"),
    [
        (4.0, 4.0 * 1.31, "PMD"),  # +31%, +1.24
        (4.0, 4.0 * 1.29, "SMD"),  # +29%
        (3.0, 3.9, "SMD"),  # exactly +30% is not "> 30%"
        (2.5, 2.5 * 1.32, "SMD"),  # +32% but +0.80 is not "> 0.8"
        (4.0, 4.0 * 0.69, "PMR"),  # -31%, -1.24
        (4.0, 4.0 * 0.71, "SMD"),  # -29%
        (4.0, 4.0 * 0.70, "PMR"),  # exactly -30% satisfies ">= 30%"
        (2.5, 2.5 * 0.68, "PMR"),  # -32% and -0.80 satisfies ">= 0.8"
        (2.0, 2.0 * 0.65, "SMD"),  # -35% but only -0.70
    ],
)
def test_percist_percent_boundaries(b_peak, f_peak, expected):
    assert _percist(b_peak, f_peak, liver=(0.5, 0.05)).category == expected


@pytest.mark.parametrize(
    ("delta", "expected_up", "expected_down"),
    [(0.7, "SMD", "SMD"), (0.9, "PMD", "PMR")],
)
def test_percist_absolute_sul_boundaries(delta, expected_up, expected_down):
    """0.7 vs 0.9 SUL with a large (> 30%) relative change: only 0.9 changes the category."""
    sul = 0.75
    b_suv = 2.0 / sul  # baseline SULpeak 2.0
    up = _percist(b_suv, (2.0 + delta) / sul, sul=sul)
    down = _percist(b_suv, (2.0 - delta) / sul, sul=sul, liver=(0.5, 0.05))
    assert up.unit == "SUL" and up.baseline_peak == pytest.approx(2.0)
    assert abs(up.change_pct) > 30 and abs(down.change_pct) > 30
    assert up.category == expected_up
    assert down.category == expected_down


def test_percist_uses_suv_without_lbm_and_says_so():
    res = _percist(4.0, 4.0 * 1.31)
    assert res.unit == "SUV"
    assert any("SUL unavailable" in n for n in res.notes)


def test_percist_new_lesion_tlg_cmr_ne():
    assert _percist(4.0, 4.0, new=1).category == "PMD"
    # TLG +80% with SULpeak stable -> PMD.
    assert _percist(4.0, 4.0, f_volume=18.0).category == "PMD"
    assert _percist(4.0, 4.0, f_volume=17.0).category == "SMD"  # +70% TLG
    # Follow-up hottest lesion at liver level -> CMR; no follow-up lesion -> CMR.
    assert _percist(4.0, 0.9).category == "CMR"
    assert _percist(4.0, None).category == "CMR"
    # Baseline below 1.5 x liver + 2 SD = 1.5*2 + 0.4 = 3.4 -> not measurable.
    res = _percist(3.3, 1.0, liver=(2.0, 0.2))
    assert res.measurable_baseline is False and res.category == "NE"
    assert res.measurability_threshold == pytest.approx(3.4)
    # No liver: measurability unknown, categories still given, with a note.
    res = _percist(4.0, 2.0, liver=None)
    assert res.measurable_baseline is None and res.category == "PMR"
    assert any("no liver reference" in n for n in res.notes)


def _change(ld_b, ld_f):
    from types import SimpleNamespace

    return SimpleNamespace(longest_diameter_mm_baseline=ld_b, longest_diameter_mm_followup=ld_f)


@pytest.mark.parametrize(
    ("factor", "one_cycle", "expected"),
    [
        (1.26, False, "PMD"),
        (1.24, False, "SMD"),
        (0.74, False, "PMR"),
        (0.76, False, "SMD"),
        (0.85, True, "PMR"),
        (0.86, True, "SMD"),
    ],
)
def test_eortc(factor, one_cycle, expected):
    b, f = scan([lesion(1, 5.0)]), scan([lesion(1, 5.0 * factor)])
    assert eortc(b, f, [_change(30, 30)], 0, one_cycle).category == expected


def test_eortc_extent_and_new():
    b, f = scan([lesion(1, 5.0)]), scan([lesion(1, 5.0)])
    assert eortc(b, f, [_change(30, 36.3)], 0).category == "PMD"
    assert eortc(b, f, [_change(30, 35.7)], 0).category == "SMD"
    assert eortc(b, f, [], 2).category == "PMD"
    assert eortc(b, scan([]), [], 0).category == "CMR"


def _choi(ld_f, hu_f, *, new=0, nodules=0, ct=True):
    from types import SimpleNamespace

    b = scan([lesion(1, 5.0, hu_mean=60.0, longest_diameter_mm=50.0)], has_ct=ct)
    f = scan([lesion(1, 5.0, hu_mean=hu_f, longest_diameter_mm=ld_f)], has_ct=ct)
    return choi(b, f, [SimpleNamespace(followup_id=1)], new, nodules)


@pytest.mark.parametrize(
    ("ld_f", "hu_f", "expected"),
    [
        (45.0, 60.0, "PR"),  # size -10%
        (46.0, 60.0, "SD"),  # size -8%
        (50.0, 51.0, "PR"),  # density -15%
        (50.0, 52.0, "SD"),  # density -13%
        (55.0, 60.0, "PD"),  # size +10%, no density response
        (55.0, 50.0, "PR"),  # size +10% but density -17%: PR by density
    ],
)
def test_choi_boundaries(ld_f, hu_f, expected):
    assert _choi(ld_f, hu_f).category == expected


def test_choi_nodule_new_and_no_ct():
    assert _choi(45.0, 40.0, nodules=1).category == "PD"
    assert _choi(45.0, 40.0, new=1).category == "PD"
    res = _choi(45.0, 40.0, ct=False)
    assert res.applicable is False and res.category is None
