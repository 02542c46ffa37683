"""PhantomConfig helpers."""

from __future__ import annotations


def test_phantom_tag_is_a_safe_cache_key() -> None:
    from petflare.synth.config import phantom_tag

    assert phantom_tag({}) == ""
    tag = phantom_tag({"spacing_inplane_mm": [3.0, 5.0], "max_shift_mm": 20.0})
    assert tag == "max_shift_mm-20.0_spacing_inplane_mm-3.0-5.0"  # sorted keys
    assert phantom_tag({"orientations": ("RAS", "LPS")}) == "orientations-RAS-LPS"
    assert not set(phantom_tag({"psf_fwhm_mm": (4.5, 9.0)})) & set(" []*?,'\"/")
    assert phantom_tag({"a": [1, 2]}) != phantom_tag({"a": [1, 3]})
