"""Fixtures for the phantom tests."""

from __future__ import annotations

import pytest

from petflare.synth import PhantomConfig


@pytest.fixture
def coarse_config() -> PhantomConfig:
    """Coarse (8-10 mm) but otherwise default phantom settings, so a pair takes ~0.2 s."""
    return PhantomConfig(
        spacing_inplane_mm=(8.0, 10.0), spacing_slice_mm=(8.0, 10.0), psf_fwhm_mm=(9.0, 12.0)
    )
