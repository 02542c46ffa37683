"""The rule-based pattern classifier on constructed feature sets."""

from __future__ import annotations

from quant_phantoms import lesion, scan

from petflare.constants import PATTERNS
from petflare.quant import classify_pattern_rules
from petflare.quant.change import disease_change, pct_change
from petflare.quant.criteria import choi, eortc, percist
from petflare.quant.registration import identity_registration
from petflare.quant.report import LesionChange, LesionMatch, PairReport


def _change(fid, *, peak=(4.0, 4.0), mean=(2.5, 2.5), focal=(1.1, 1.1), hot=(3.0, 3.0), rest=2.5):
    return LesionChange(
        followup_id=fid,
        baseline_ids=[fid],
        suv_max_baseline=peak[0] * 1.2,
        suv_max_followup=peak[1] * 1.2,
        suv_max_change_pct=pct_change(peak[0], peak[1]),
        suv_peak_baseline=peak[0],
        suv_peak_followup=peak[1],
        suv_peak_change_pct=pct_change(*peak),
        suv_mean_baseline=mean[0],
        suv_mean_followup=mean[1],
        suv_mean_change_pct=pct_change(*mean),
        volume_ml_baseline=20.0,
        volume_ml_followup=20.0,
        volume_change_pct=0.0,
        tlg_baseline=mean[0] * 20,
        tlg_followup=mean[1] * 20,
        tlg_change_pct=pct_change(*mean),
        longest_diameter_mm_baseline=40.0,
        longest_diameter_mm_followup=40.0,
        hu_mean_baseline=None,
        hu_mean_followup=None,
        hu_change_pct=None,
        mass_volume_ml_followup=20.0,
        lesion_fraction_of_mass=1.0,
        focal_ratio_baseline=focal[0],
        focal_ratio_followup=focal[1],
        hotspot_centre_mm=[1.0, 2.0, 3.0],
        hotspot_volume_ml=1.8,
        hotspot_suv_mean_followup=hot[1],
        hotspot_suv_mean_baseline_same_site=hot[0],
        hotspot_change_pct=pct_change(*hot),
        rest_suv_mean_followup=rest,
        rest_change_pct=pct_change(mean[0], rest),
        uptake_rose=pct_change(*peak) >= 25.0,
    )


def _pair(changes, *, n_base=3, new=()):
    """Pair report with baseline lesions 1..n_base, changes for some, and new lesions.

    ``new`` holds (volume_ml, suv_peak), optionally followed by the baseline-site SUV contrast
    (default 1.0) and the baseline-site SUVmean (default 0.6: background, so the uptake is new).
    """
    base = scan([lesion(i, 4.0, centroid_mm=(50.0 * i, 0, 0)) for i in range(1, n_base + 1)])
    f_les = [lesion(c.followup_id, c.suv_peak_followup) for c in changes]
    f_les += [lesion(100 + k, n[1], volume_ml=n[0]) for k, n in enumerate(new)]
    follow = scan(f_les)
    persisting = {c.followup_id for c in changes}
    matches = [
        LesionMatch("followup", c.followup_id, "persisting", [c.followup_id], 10, 1.0)
        for c in changes
    ]
    matches += [
        LesionMatch(
            "followup",
            100 + k,
            "new",
            [],
            0,
            80.0,
            n[3] if len(n) > 3 else 0.6,
            n[2] if len(n) > 2 else 1.0,
        )
        for k, n in enumerate(new)
    ]
    matches += [
        LesionMatch(
            "baseline",
            i,
            "persisting" if i in persisting else "resolved",
            [i] if i in persisting else [],
            10,
            None,
        )
        for i in range(1, n_base + 1)
    ]
    disease = disease_change(base, follow, matches, changes)
    return PairReport(
        baseline=base,
        followup=follow,
        registration=identity_registration(),
        matches=matches,
        changes=changes,
        disease=disease,
        percist=percist(base, follow, disease.n_new),
        eortc=eortc(base, follow, changes, disease.n_new),
        choi=choi(base, follow, changes, disease.n_new, 0),
    )


def test_controlled_response():
    changes = [_change(i, peak=(4.0, 2.4), mean=(2.5, 1.5), rest=1.5) for i in (1, 2, 3)]
    d = classify_pattern_rules(_pair(changes))
    assert d.label == "controlled" and d.rule == "R4_controlled" and d.evidence
    assert d.label in PATTERNS


def test_new_lesion_fires_first_and_small_faint_ones_do_not():
    changes = [_change(i) for i in (1, 2, 3)]
    d = classify_pattern_rules(_pair(changes, new=[(2.0, 5.0)]))
    assert d.label == "new_lesions" and d.rule == "R2_new_lesions"
    assert any("new lesion" in e for e in d.evidence)
    # A 0.1 ml speck, or a faint (SUVpeak 1.0) unmatched region, is not called new disease.
    assert classify_pattern_rules(_pair(changes, new=[(0.1, 5.0)])).label == "controlled"
    assert classify_pattern_rules(_pair(changes, new=[(3.0, 1.0)])).label == "controlled"


def test_unmatched_lesion_with_the_same_uptake_at_baseline_is_not_new():
    changes = [_change(i) for i in (1, 2, 3)]
    # SUVmean 3.0 (peak 5.0); the same site held SUV 2.7 on the baseline PET: the mask differs
    # (physiological uptake, or a lesion the baseline mask missed), the uptake is not new.
    d = classify_pattern_rules(_pair(changes, new=[(2.0, 5.0, 1.0, 2.7)]))
    assert d.label == "controlled"
    assert any("1 at sites with the same uptake" in e for e in d.evidence)
    # 1.2 at baseline (40% of today's uptake): new uptake, new lesion.
    assert classify_pattern_rules(_pair(changes, new=[(2.0, 5.0, 1.0, 1.2)])).label == "new_lesions"


def test_diffuse_flare():
    changes = [
        _change(i, peak=(2.0, 4.0), mean=(1.3, 2.6), hot=(1.6, 3.2), rest=2.6) for i in (1, 2, 3)
    ]
    d = classify_pattern_rules(_pair(changes))
    assert d.label == "diffuse_flare" and d.rule == "R1_diffuse_flare"
    assert any("3/3" in e for e in d.evidence)


def test_flare_needs_most_lesions_and_a_mass_wide_rise():
    # Only 1 of 3 lesions rose: not diffuse.
    changes = [_change(1, peak=(2.0, 4.0), mean=(1.3, 2.6), hot=(1.6, 3.2), rest=2.6)]
    changes += [_change(i) for i in (2, 3)]
    assert classify_pattern_rules(_pair(changes)).label == "controlled"
    # SUVpeak up everywhere but SUVmean flat (noise in a small hot spot): not a flare.
    changes = [
        _change(i, peak=(3.0, 4.0), mean=(2.0, 2.1), focal=(1.1, 1.2), hot=(3.0, 3.3))
        for i in (1, 2, 3)
    ]
    assert classify_pattern_rules(_pair(changes)).label == "controlled"


def test_nodule_within_mass():
    # One mass: hotspot 2.2x the rest, hotspot +150% at the same site, rest of the mass down.
    nod = _change(2, peak=(3.0, 6.0), mean=(2.0, 2.0), focal=(1.1, 2.5), hot=(2.4, 6.0), rest=1.8)
    changes = [_change(1, peak=(4.0, 3.0), mean=(2.5, 1.9)), nod, _change(3)]
    d = classify_pattern_rules(_pair(changes))
    assert d.label == "nodule_within_mass" and d.rule == "R3_nodule_within_mass"
    assert "follow-up lesion 2" in d.evidence[0] and "focal sign" in d.evidence[0]


def test_mass_that_lit_up_entirely_is_flare_not_nodule():
    # Focal ratio high but the rest of the mass rose too (+60%): diffuse, not a resistant clone.
    changes = [
        _change(i, peak=(2.0, 4.5), mean=(1.5, 2.6), focal=(1.1, 1.7), hot=(1.8, 4.2), rest=2.4)
        for i in (1, 2, 3)
    ]
    assert classify_pattern_rules(_pair(changes)).label == "diffuse_flare"


def test_flare_tolerates_one_new_site_and_counts_reactivated_sites():
    flare = [_change(i, peak=(2.0, 4.0), mean=(1.3, 2.6), hot=(1.6, 3.2), rest=2.6) for i in (1, 2)]
    flat = [_change(3)]
    # 2/3 rose, plus one small new site: still a flare.
    assert classify_pattern_rules(_pair(flare + flat, new=[(2.0, 5.0)])).label == "diffuse_flare"
    # Two new sites at uninvolved places: new lesions.
    two_new = _pair(flare + flat, new=[(2.0, 5.0), (3.0, 6.0)])
    assert classify_pattern_rules(two_new).label == "new_lesions"
    # 1/3 rose, but two previously non-avid masks lit up (site contrast 2.0): 3/5 known sites.
    d = classify_pattern_rules(
        _pair(flare[:1] + [_change(2), _change(3)], new=[(20.0, 6.0, 2.0), (15.0, 6.0, 2.0)])
    )
    assert d.label == "diffuse_flare" and "2 reactivated" in d.evidence[0]


def test_nodule_remnant_sign_and_focus_at_reactivated_site():
    # The only avid part of a 40 ml mass is a 0.8 ml focus, the rest of the mass fell.
    rem = _change(1, peak=(6.0, 3.0), mean=(4.0, 3.0), focal=(1.3, 1.4), hot=(6.0, 3.5), rest=1.5)
    rem.volume_ml_followup, rem.mass_volume_ml_followup, rem.lesion_fraction_of_mass = 0.8, 40, 0.02
    d = classify_pattern_rules(_pair([rem, _change(2), _change(3)]))
    assert d.rule == "R3_nodule_within_mass" and "remnant sign" in d.evidence[0]
    # Same focus but the rest of the mass also rose: not a nodule.
    rem.rest_change_pct = 10.0
    assert classify_pattern_rules(_pair([rem, _change(2), _change(3)])).label == "controlled"
    # A 1 ml avid focus at a baseline site that stood out (contrast 1.8) but had no lesion.
    d = classify_pattern_rules(_pair([_change(i) for i in (1, 2, 3)], new=[(1.0, 5.0, 1.8)]))
    assert d.label == "nodule_within_mass" and "reactivated" in d.evidence[0]


def test_small_focus_inside_hypodense_mass_is_a_nodule_not_a_new_lesion():
    pair = _pair([_change(i) for i in (1, 2, 3)], new=[(1.2, 4.0)])
    pair.matches[3].followup_shell_hu_mean = 14.0  # water-like shell: a responding GIST mass
    d = classify_pattern_rules(pair)
    assert d.label == "nodule_within_mass" and "hypodense" in d.evidence[0]
    pair.matches[3].followup_shell_hu_mean = 55.0  # normal liver around it: new lesion
    assert classify_pattern_rules(pair).label == "new_lesions"
