"""PERCIST 1.0, EORTC 1999 and Choi categories at their boundaries."""

from __future__ import annotations

import pytest
from quant_phantoms import lesion, scan

from petflare.quant.criteria import choi, criteria_vs_pattern, eortc, percist


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
    # No liver: measurability cannot be assessed, so neither can the response.
    res = _percist(4.0, 2.0, liver=None)
    assert res.measurable_baseline is None and res.category == "NE"
    assert "liver reference not found" in res.not_assessable_reason


def _change(ld_b, ld_f):
    from types import SimpleNamespace

    return SimpleNamespace(
        followup_id=1, longest_diameter_mm_baseline=ld_b, longest_diameter_mm_followup=ld_f
    )


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
    return choi(b, f, [SimpleNamespace(followup_id=1, baseline_ids=[1])], new, nodules)


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


# --------------------------------------------------------------------------- PERCIST NE and SUL


def test_percist_measurability_boundary_is_strict():
    """Wahl 2009: measurable only when SULpeak > 1.5 x liver mean + 2 SD (here 3.4)."""
    at = _percist(3.4, 1.0, liver=(2.0, 0.2))
    above = _percist(3.41, 1.0, liver=(2.0, 0.2))
    assert at.category == "NE" and "no measurable lesion at baseline" in at.not_assessable_reason
    assert "3.40" in at.not_assessable_reason  # the threshold is shown
    assert above.measurable_baseline is True and above.category != "NE"


def test_percist_no_baseline_lesion_is_not_assessable():
    b = scan([])
    f = scan([lesion(1, 3.0)])
    res = percist(b, f, 0)
    assert res.category == "NE" and res.not_assessable_reason == "no lesion at baseline"


@pytest.mark.parametrize(
    ("t_base", "t_follow", "expected"),
    [
        (60.0, 75.0, "PMR"),  # exactly 15 min apart: within tolerance
        (60.0, 76.0, "NE"),  # 16 min: SUVs not comparable
        (75.0, 59.0, "NE"),  # earlier follow-up counts the same
        (60.0, None, "PMR"),  # one time unknown: nothing to check
    ],
)
def test_percist_uptake_time_tolerance(t_base, t_follow, expected):
    b = scan([lesion(1, 4.0)], liver=(0.5, 0.05), uptake_time_min=t_base)
    f = scan([lesion(1, 2.0)], liver=(0.5, 0.05), uptake_time_min=t_follow)
    res = percist(b, f, 0)
    assert res.category == expected
    if expected == "NE":
        assert "uptake times differ" in res.not_assessable_reason
        assert res.uptake_time_difference_min == pytest.approx(t_follow - t_base)


def test_percist_new_lesions_still_pmd_with_uptake_mismatch_and_named():
    b = scan([lesion(1, 4.0)], uptake_time_min=60.0)
    f = scan([lesion(1, 4.0), lesion(7, 3.0, volume_ml=2.5)], uptake_time_min=100.0)
    res = percist(b, f, 1, new_lesion_ids=[7])
    assert res.category == "PMD" and res.new_lesion_ids == [7]
    assert any("new follow-up lesion(s) 7" in d for d in res.drivers)
    assert any("uptake times differ by 40 min" in n for n in res.notes)


def test_percist_reports_liver_and_threshold_in_sul():
    """With SUL on both scans every PERCIST number is in SUL: lesion, liver and threshold."""
    sul = 0.8
    res = _percist(5.0, 2.5, liver=(2.0, 0.2), sul=sul)
    assert res.unit == "SUL" and res.normalisation.startswith("SUL")
    assert res.liver_mean_baseline == pytest.approx(1.6)
    assert res.liver_sd_baseline == pytest.approx(0.16)
    assert res.measurability_threshold == pytest.approx(1.5 * 1.6 + 2 * 0.16)
    assert res.baseline_peak == pytest.approx(4.0) and res.category == "PMR"
    assert res.baseline_lesion_id == 1 and res.followup_lesion_id == 1


def test_percist_sul_on_one_scan_only_falls_back_to_suv_and_names_it():
    b = scan([lesion(1, 4.0, sul_factor=0.8)], sul_factor=0.8)
    f = scan([lesion(1, 2.0)])
    res = percist(b, f, 0)
    assert res.unit == "SUV" and res.baseline_peak == pytest.approx(4.0)
    assert "follow-up" in res.normalisation and "baseline" not in res.normalisation


def test_percist_cmr_uses_followup_liver_and_notes_liver_drift():
    b = scan([lesion(1, 6.0)], liver=(2.0, 0.2))
    f = scan([lesion(1, 2.6)], liver=(2.7, 0.2))  # liver +35%: above the follow-up liver? no
    res = percist(b, f, 0)
    assert res.category == "CMR" and res.liver_mean_followup == pytest.approx(2.7)
    assert any("reproducibility" in n for n in res.notes)


def test_eortc_not_assessable_cases():
    res = eortc(scan([]), scan([lesion(1, 3.0)]), [], 0)
    assert res.category == "NE" and res.not_assessable_reason == "no lesion at baseline"
    b = scan([lesion(1, 5.0)], uptake_time_min=60.0)
    f = scan([lesion(1, 2.0)], uptake_time_min=90.0)
    res = eortc(b, f, [_change(30, 30)], 0)
    assert res.category == "NE" and "uptake times differ" in res.not_assessable_reason
    ok = eortc(b, scan([lesion(1, 2.0)], uptake_time_min=70.0), [_change(30, 30)], 0)
    assert ok.category == "PMR" and ok.baseline_lesion_id == 1 and ok.unit == "SUV"


# --------------------------------------------------------------------------- Choi


def _choi_pair(b_lesions, f_lesions, links, *, ct_contrast="unknown", new=0, new_ids=()):
    """Choi on chosen lesions; ``links`` is [(followup_id, [baseline ids])] (persisting)."""
    from types import SimpleNamespace

    b = scan(b_lesions, has_ct=True)
    f = scan(f_lesions, has_ct=True)
    changes = [SimpleNamespace(followup_id=fid, baseline_ids=bids) for fid, bids in links]
    return choi(b, f, changes, new, 0, ct_contrast=ct_contrast, new_lesion_ids=new_ids)


def _les(i, ld, hu, volume_ml=10.0):
    return lesion(i, 5.0, hu_mean=hu, longest_diameter_mm=ld, volume_ml=volume_ml)


def test_choi_near_zero_baseline_hu_gives_no_density_percentage():
    """The PF0002 case: lesions near 0 HU on the low-dose CT; no percentage, size alone."""
    res = _choi_pair([_les(1, 50.0, -34.0)], [_les(1, 46.0, 0.5)], [(1, [1])])
    assert res.density_assessable is False and res.density_change_pct is None
    assert "below 20 HU" in res.density_reason
    assert res.category_basis == "size only" and res.category == "SD"  # -8% by size
    assert any("category from size alone" in n for n in res.notes)
    assert res.density_baseline_hu == pytest.approx(-34.0)  # shown, without a percentage


@pytest.mark.parametrize(
    ("b_hu", "assessable"),
    [(20.0, True), (19.9, False), (-5.0, False), (60.0, True)],
)
def test_choi_density_floor_boundary(b_hu, assessable):
    res = _choi_pair([_les(1, 50.0, b_hu)], [_les(1, 50.0, b_hu * 0.8)], [(1, [1])])
    assert res.density_assessable is assessable
    assert (res.density_change_pct is not None) is assessable
    assert res.category == ("PR" if assessable else "SD")  # -20% density, size unchanged


@pytest.mark.parametrize(
    ("contrast", "assessable", "unknown_note"),
    [("portal_venous", True, False), ("none", False, False), ("unknown", True, True)],
)
def test_choi_ct_contrast_declaration(contrast, assessable, unknown_note):
    res = _choi_pair([_les(1, 50.0, 80.0)], [_les(1, 50.0, 60.0)], [(1, [1])], ct_contrast=contrast)
    assert res.ct_contrast == contrast and res.density_assessable is assessable
    assert res.category == ("PR" if assessable else "SD")
    assert any("ct_contrast=unknown" in n for n in res.notes) is unknown_note
    if contrast == "none":
        assert "declared non-contrast" in res.density_reason


def test_choi_rejects_unknown_contrast_value():
    with pytest.raises(ValueError, match="ct_contrast"):
        _choi_pair([_les(1, 50.0, 80.0)], [_les(1, 50.0, 60.0)], [(1, [1])], ct_contrast="iv")


def test_choi_density_uses_the_same_targets_at_both_visits():
    """A resolved baseline lesion counts in size (as 0) but not in the baseline density."""
    b = [_les(1, 50.0, 60.0), _les(2, 40.0, 150.0)]
    f = [_les(1, 50.0, 51.0)]
    res = _choi_pair(b, f, [(1, [1])])
    assert res.target_lesion_ids == [1, 2] and res.followup_target_ids == [1]
    assert res.density_lesion_ids == [1]
    assert res.density_baseline_hu == pytest.approx(60.0)  # not (60 + 150) / 2
    assert res.density_change_pct == pytest.approx(-15.0)
    assert res.size_baseline_mm == pytest.approx(90.0) and res.size_followup_mm == 50.0
    assert res.category == "PR"


def test_choi_merge_counts_the_followup_lesion_once():
    b = [_les(1, 30.0, 60.0), _les(2, 30.0, 60.0)]
    f = [_les(5, 66.0, 60.0)]
    res = _choi_pair(b, f, [(5, [1, 2])])
    assert res.size_followup_mm == pytest.approx(66.0) and res.size_change_pct == pytest.approx(10)
    assert res.category == "PD"


def test_choi_targets_are_the_ten_largest_measurable():
    b = [_les(i, 10.0 + i, 60.0) for i in range(1, 13)] + [_les(20, 9.9, 60.0)]
    f = [_les(i, 10.0 + i, 60.0) for i in range(1, 13)]
    res = _choi_pair(b, f, [(i, [i]) for i in range(1, 13)])
    assert res.target_lesion_ids == list(range(3, 13))
    assert any("10 target lesion(s) of 13" in n for n in res.notes)
    small = _choi_pair([_les(1, 9.0, 60.0)], [_les(1, 5.0, 60.0)], [(1, [1])])
    assert small.category == "NE" and "no measurable target" in small.not_assessable_reason


def test_choi_unmatched_followup_lesion_is_new_and_named():
    res = _choi_pair(
        [_les(1, 50.0, 60.0)],
        [_les(1, 40.0, 40.0), _les(2, 15.0, 40.0)],
        [(1, [1])],
        new=1,
        new_ids=[2],
    )
    assert res.category == "PD" and res.new_lesion_ids == [2]
    assert any("new follow-up lesion(s) 2" in d for d in res.drivers)


# --------------------------------------------------------------------------- pattern vs criteria


def _pair(b_lesions, f_lesions, matches, *, n_rose=0):
    """A duck-typed pair report with the criteria computed from the given lesions."""
    from types import SimpleNamespace

    from petflare.quant.report import LesionMatch

    b, f = scan(b_lesions), scan(f_lesions)
    new_ids = [m.lesion_id for m in matches if m.status == "new"]
    changes = [_change(30, 30)]
    rep = SimpleNamespace(
        baseline=b,
        followup=f,
        matches=[LesionMatch(**vars(m)) for m in matches],
        percist=percist(b, f, len(new_ids), new_lesion_ids=new_ids),
        eortc=eortc(b, f, changes, len(new_ids), new_lesion_ids=new_ids),
        choi=choi(b, f, changes, len(new_ids), 0, new_lesion_ids=new_ids),
        disease=SimpleNamespace(
            n_new=len(new_ids),
            n_baseline_rose=n_rose,
            n_baseline_lesions=len(b_lesions),
            rise_threshold_pct=25.0,
            rise_spread_mm=0.0,
        ),
        pattern_rules=None,
    )
    return rep


def _match(lesion_id, status, site_suv=None):
    from types import SimpleNamespace

    return SimpleNamespace(
        timepoint="followup",
        lesion_id=lesion_id,
        status=status,
        matched_ids=[1] if status == "persisting" else [],
        overlap_voxels=0,
        distance_mm=None,
        baseline_site_suv_mean=site_suv,
    )


def test_disagreement_names_the_lesions_behind_criterion_and_pattern():
    """PERCIST PMD from an unmatched lesion whose site already had that uptake, pattern
    controlled: the evidence names lesion 3 on both sides."""
    les3 = lesion(3, 3.0, suv_mean=2.0)
    rep = _pair(
        [lesion(1, 5.0)],
        [lesion(1, 5.0), les3],
        [_match(1, "persisting"), _match(3, "new", site_suv=1.9)],
    )
    lines = criteria_vs_pattern(rep, "controlled")
    percist_line = next(x for x in lines if x.startswith("PERCIST PMD"))
    assert "new follow-up lesion(s) 3" in percist_line
    assert any(x.startswith("EORTC PMD") for x in lines)
    (pattern_line,) = [x for x in lines if x.startswith("The pattern (controlled)")]
    assert "follow-up lesion 3 has no baseline lesion" in pattern_line
    assert "same uptake, not new" in pattern_line
    # Agreement produces no sentence.
    assert criteria_vs_pattern(rep, "new_lesions") == []


def test_no_disagreement_sentence_for_not_assessable_criteria():
    rep = _pair([], [lesion(1, 5.0)], [_match(1, "persisting")])
    assert rep.percist.category == "NE"
    assert criteria_vs_pattern(rep, "new_lesions") == []


def test_progression_pattern_against_stable_criteria_is_explained():
    rep = _pair([lesion(1, 5.0)], [lesion(1, 5.2)], [_match(1, "persisting")])
    lines = criteria_vs_pattern(rep, "nodule_within_mass")
    assert lines and lines[0].startswith("PERCIST SMD while the pattern is nodule_within_mass")
    assert "hottest baseline lesion 1" in lines[0]
    assert lines[-1].startswith("The pattern (nodule_within_mass) is driven by")


@pytest.mark.parametrize(
    ("b_hu", "f_hu", "expected"),
    [
        (-34.0, 0.5, None),
        (0.4, 10.0, None),
        (19.9, 30.0, None),
        (20.0, 17.0, -15.0),
        (None, 5, None),
    ],
)
def test_lesion_hu_percent_change_needs_a_meaningful_baseline(b_hu, f_hu, expected):
    from petflare.quant.change import hu_pct_change

    got = hu_pct_change(b_hu, f_hu)
    assert got == (None if expected is None else pytest.approx(expected))


def test_choi_nodule_against_a_controlled_learned_pattern_names_the_nodule_and_the_rules():
    from types import SimpleNamespace

    from petflare.quant.report import RuleDecision

    rep = _pair([lesion(1, 5.0)], [lesion(1, 4.0)], [_match(1, "persisting")])
    b = scan([_les(1, 50.0, 60.0)], has_ct=True)
    f = scan([_les(1, 45.0, 50.0)], has_ct=True)
    links = [SimpleNamespace(followup_id=1, baseline_ids=[1])]
    rep.choi = choi(b, f, links, 0, 1, nodule_lesion_ids=[1])
    rep.pattern_rules = RuleDecision("nodule_within_mass", "R3_nodule_within_mass", [])
    lines = criteria_vs_pattern(rep, "controlled")
    choi_line = next(x for x in lines if x.startswith("Choi PD"))
    assert "new intratumoural nodule(s) in follow-up lesion(s) 1" in choi_line
    pattern_line = lines[-1]
    assert "follow-up lesion(s) 1 show the focal nodule sign" in pattern_line
    assert "rule-based classifier says nodule_within_mass" in pattern_line
    assert "no focal nodule" not in pattern_line


@pytest.mark.parametrize(
    ("factor", "one_cycle", "expected"),
    [
        (1.25, False, "SMD"),  # exactly +25% is not "> 25%"
        (0.75, False, "SMD"),  # exactly -25% is not "> 25%" down (later cycles)
        (0.85, True, "PMR"),  # exactly -15% after one cycle: ">= 15%"
        (0.75, True, "PMR"),
    ],
)
def test_eortc_exact_boundaries(factor, one_cycle, expected):
    b, f = scan([lesion(1, 5.0)]), scan([lesion(1, 5.0 * factor)])
    assert eortc(b, f, [_change(30, 30)], 0, one_cycle).category == expected


def test_eortc_and_percist_exact_extent_and_tlg_boundaries():
    b, f = scan([lesion(1, 5.0)]), scan([lesion(1, 5.0)])
    assert eortc(b, f, [_change(30, 36.0)], 0).category == "SMD"  # exactly +20%
    assert _percist(4.0, 4.0, f_volume=17.5).category == "SMD"  # TLG exactly +75%


def test_flare_against_pmd_names_reactivated_sites():
    """A flare pattern vs PMD from unmatched lesions at known (non-avid) masses."""
    les4 = lesion(4, 8.0, suv_mean=5.0)
    m = _match(4, "new", site_suv=1.0)
    m.baseline_site_suv_contrast = 2.0
    rep = _pair([lesion(1, 5.0)], [lesion(1, 8.0), les4], [_match(1, "persisting"), m], n_rose=1)
    lines = criteria_vs_pattern(rep, "diffuse_flare")
    assert lines[0].startswith("PERCIST PMD while the pattern is diffuse_flare")
    assert "follow-up lesion 4 is a reactivated site" in lines[-1]
    assert "PET flare" in lines[-1]
