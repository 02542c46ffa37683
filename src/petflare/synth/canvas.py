"""A pair of noise-free volumes (activity in SUV, attenuation in HU) painted shape by shape."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from petflare.constants import ORGAN_TO_INDEX
from petflare.synth.geometry import ScanGeometry, Slices, ramp

ValueLike = float | np.ndarray

#: A voxel takes a painted organ's label when the paint fills at least this share of it.
ORGAN_VOXEL_OCCUPANCY = 0.5


class Canvas:
    """Noise-free SUV and HU volumes on one scan grid, painted like layers of paint.

    ``paint`` blends a value into the volumes with a soft occupancy, so later shapes cover
    earlier ones and boundaries keep their partial-volume fractions.

    ``tracked`` tissues (e.g. ``"liver"``) get a fraction map: the share of each voxel's final
    (noise-free) SUV that comes from paint of that tissue. Painting a tissue with occupancy
    ``o`` sets ``f <- f + o (1 - f)``; painting anything else over it sets ``f <- f (1 - o)``,
    the same blend as the SUV itself, so ``fraction == 1`` means the voxel shows that tissue
    only (not covered by a later organ, vessel or lesion).

    ``organs`` is the organ label map (``petflare.constants.ORGAN_TO_INDEX``): a voxel takes the
    organ of the last SUV paint that fills at least half of it (``ORGAN_VOXEL_OCCUPANCY``), so
    anything painted later without an organ (bone, vessel, lesion) sets it back to 0.
    """

    def __init__(
        self,
        geometry: ScanGeometry,
        rng: np.random.Generator,
        tracked: tuple[str, ...] = (),
    ) -> None:
        self.geometry = geometry
        self.rng = rng
        self.suv = np.zeros(geometry.shape, dtype=np.float32)
        self.hu = np.full(geometry.shape, -1000.0, dtype=np.float32)
        #: Per tracked tissue, its fraction of each voxel's final SUV (see the class docstring).
        self.fractions: dict[str, np.ndarray] = {
            name: np.zeros(geometry.shape, dtype=np.float32) for name in tracked
        }
        #: Edge width of the occupancy ramp: the mean voxel size (mm).
        self.edge_mm = float(np.mean(geometry.spacing_mm))
        #: Organ label map: ``ORGAN_TO_INDEX`` of what each voxel shows, 0 elsewhere.
        self.organs = np.zeros(geometry.shape, dtype=np.uint8)
        #: Smooth displacement (3, *shape) mm added to body/organ coordinates, or None.
        self.warp_mm: np.ndarray | None = None
        #: Upper bound of the displacement's length (box margin for deformed shapes).
        self.warp_max_mm = 0.0
        self._fields: dict[tuple, np.ndarray] = {}

    def coords(self, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient-frame x, y, z of the voxels in ``sl``."""
        c = self.geometry.coords()
        return c[0][sl], c[1][sl], c[2][sl]

    def set_warp(self, displacement_mm: np.ndarray) -> None:
        """Deform body and organs by a (3, *shape) displacement (mm) of every voxel.

        :meth:`body_coords` adds it to the coordinates and :meth:`box` grows boxes by its
        largest length.
        """
        self.warp_mm = np.asarray(displacement_mm, dtype=np.float32)
        self.warp_max_mm = float(np.sqrt((self.warp_mm**2).sum(axis=0)).max()) + 1.0

    def body_coords(self, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates at which body and organ shapes are evaluated (deformed when warped)."""
        x, y, z = self.coords(sl)
        if self.warp_mm is None:
            return x, y, z
        w = self.warp_mm
        return x + w[0][sl], y + w[1][sl], z + w[2][sl]

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Slices | None:
        """Slices covering a patient-frame box grown by the deformation's reach."""
        m = self.warp_max_mm
        return self.geometry.box(np.asarray(lo_mm) - m, np.asarray(hi_mm) + m)

    def occupancy(self, sd_mm: np.ndarray) -> np.ndarray:
        """Occupancy from a signed distance with a one-voxel ramp."""
        return ramp(sd_mm, self.edge_mm)

    def paint(
        self,
        sl: Slices,
        occ: np.ndarray,
        suv: ValueLike | None = None,
        hu: ValueLike | None = None,
        tissue: str | None = None,
        organ: str | None = None,
    ) -> None:
        """Blend ``suv`` / ``hu`` (scalars or arrays on ``sl``) into the volumes with ``occ``.

        ``tissue`` names what is painted, for the fraction maps of tracked tissues; ``organ``
        (one of ``petflare.constants.ORGANS``, None: not an organ) for the organ label map.
        """
        if suv is not None:
            self.organs[sl][occ >= ORGAN_VOXEL_OCCUPANCY] = ORGAN_TO_INDEX[organ] if organ else 0
            region = self.suv[sl]
            region += occ * (np.asarray(suv, dtype=np.float32) - region)
            for name, fraction in self.fractions.items():
                part = fraction[sl]
                if name == tissue:
                    part += occ * (1.0 - part)
                else:
                    part *= 1.0 - occ
        if hu is not None:
            region = self.hu[sl]
            region += occ * (np.asarray(hu, dtype=np.float32) - region)

    def texture(
        self, sl: Slices, correlation_mm: float, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Zero-mean, unit-variance smooth Gaussian random field on ``sl`` (organ texture).

        Fields are drawn for the shape's box only; a repeated request for the same box and
        correlation length returns the same field (e.g. fat and muscle of one body piece).
        ``rng`` draws it from another stream than the canvas' (phantom v2's extras, so the
        default phantom's fields do not change).
        """
        key = (
            tuple((s.start, s.stop) for s in sl),
            round(float(correlation_mm), 1),
            None if rng is None else id(rng),
        )
        if key not in self._fields:
            shape = tuple(s.stop - s.start for s in sl)
            white = (rng or self.rng).standard_normal(shape, dtype=np.float32)
            sigma = [max(correlation_mm / sp, 0.3) for sp in self.geometry.spacing_mm]
            field = ndimage.gaussian_filter(white, sigma, mode="wrap", truncate=3.0)
            field -= field.mean()
            std = float(field.std())
            self._fields[key] = field / std if std > 0 else field
        return self._fields[key]
