"""Scan geometry and the soft-edged shape primitives the phantom is painted with.

The phantom is defined analytically in a *patient frame* (RAS+ mm: +x patient right, +y anterior,
+z superior, vertex at z = 0). Each scan has its own voxel grid (spacing, axis order and flips in
the affine) and its own patient pose (rotation + translation from patient frame to world), so
the same patient lands at slightly different world positions in the two scans, as on a real
scanner. Every voxel's patient-frame coordinate is computed once per scan; shapes are evaluated
only inside their bounding boxes.

Partial volume: shapes are rendered as *occupancies* in [0, 1] from an approximate signed
distance with a linear ramp one voxel wide, which is the exact voxel fraction for a plane
boundary; lesions are in addition supersampled (see :mod:`petflare.synth.lesions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from petflare.synth.config import _AXIS_LETTERS

Slices = tuple[slice, slice, slice]


def rotation_matrix(angles_rad: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from three angles (radians) about x, y and z."""
    ax, ay, az = (float(a) for a in angles_rad)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def orientation_to_axes(code: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Map an axis code like 'LPS' to (world axis of each array axis, sign of each array axis)."""
    perm, signs = [], []
    for letter in code.upper():
        world_axis = next(i for i, pair in enumerate(_AXIS_LETTERS) if letter in pair)
        perm.append(world_axis)
        signs.append(1 if _AXIS_LETTERS[world_axis][0] == letter else -1)
    return (perm[0], perm[1], perm[2]), (signs[0], signs[1], signs[2])


def grid_affine(
    world_lo_mm: np.ndarray, world_hi_mm: np.ndarray, spacing_xyz_mm: np.ndarray, orientation: str
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of an axis-aligned grid covering a world box, stored in ``orientation``.

    Args:
        world_lo_mm, world_hi_mm: corners of the box to cover (RAS+ mm).
        spacing_xyz_mm: voxel size along world x, y, z.
        orientation: nibabel axis code of the array axes (e.g. 'LPS': axis 0 runs to the left).
    """
    perm, signs = orientation_to_axes(orientation)
    n_world = np.ceil((world_hi_mm - world_lo_mm) / spacing_xyz_mm).astype(int) + 1
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    shape = []
    for j, (w, s) in enumerate(zip(perm, signs, strict=True)):
        affine[w, j] = s * spacing_xyz_mm[w]
        shape.append(int(n_world[w]))
        far = world_lo_mm[w] + (n_world[w] - 1) * spacing_xyz_mm[w]
        affine[w, 3] = world_lo_mm[w] if s > 0 else far
    return affine, (shape[0], shape[1], shape[2])


@dataclass
class ScanGeometry:
    """One scan's voxel grid plus the pose of the patient in the scanner (patient -> world).

    Attributes:
        shape: array shape.
        affine: voxel -> world (RAS+ mm) matrix, axis-aligned but any axis order / flips.
        rotation: 3x3 patient -> world rotation.
        translation_mm: patient -> world translation.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    rotation: np.ndarray
    translation_mm: np.ndarray
    _coords: np.ndarray | None = field(default=None, repr=False)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along each array axis (mm)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def patient_to_world(self, points_mm: np.ndarray) -> np.ndarray:
        """Map patient-frame points (..., 3) to world mm."""
        return np.asarray(points_mm) @ self.rotation.T + self.translation_mm

    def coords(self) -> np.ndarray:
        """Patient-frame coordinates (3, *shape) float32 of every voxel centre (cached)."""
        if self._coords is None:
            lin = (self.rotation.T @ self.affine[:3, :3]).astype(np.float32)
            off = (self.rotation.T @ (self.affine[:3, 3] - self.translation_mm)).astype(np.float32)
            idx = [np.arange(n, dtype=np.float32) for n in self.shape]
            out = np.empty((3, *self.shape), dtype=np.float32)
            for k in range(3):
                out[k] = (
                    lin[k, 0] * idx[0][:, None, None]
                    + lin[k, 1] * idx[1][None, :, None]
                    + lin[k, 2] * idx[2][None, None, :]
                    + off[k]
                )
            self._coords = out
        return self._coords

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Slices | None:
        """Array slices covering a patient-frame box (None when it misses the grid)."""
        lo_mm, hi_mm = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
        corners = np.array(
            [[(lo_mm, hi_mm)[(c >> k) & 1][k] for k in range(3)] for c in range(8)], dtype=float
        )
        world = self.patient_to_world(corners)
        inv = np.linalg.inv(self.affine)
        idx = world @ inv[:3, :3].T + inv[:3, 3]
        lo_i = np.floor(idx.min(axis=0)).astype(int) - 1
        hi_i = np.ceil(idx.max(axis=0)).astype(int) + 2
        lo_i = np.maximum(lo_i, 0)
        hi_i = np.minimum(hi_i, self.shape)
        if np.any(hi_i <= lo_i):
            return None
        return (slice(lo_i[0], hi_i[0]), slice(lo_i[1], hi_i[1]), slice(lo_i[2], hi_i[2]))


def ramp(signed_distance_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Occupancy in [0, 1] from a signed distance (negative inside), linear over ``width_mm``."""
    occ = np.float32(0.5) - signed_distance_mm * np.float32(1.0 / width_mm)
    return np.clip(occ, 0.0, 1.0, out=occ).astype(np.float32, copy=False)


def ellipsoid_sd(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    center: np.ndarray,
    radii: np.ndarray,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid (first-order, exact on a sphere)."""
    center = np.asarray(center, np.float32)
    radii = np.asarray(radii, np.float32)
    if rotation is not None:
        rotation = np.asarray(rotation, np.float32)
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if rotation is not None:  # rotation maps local -> patient, so local = R^T d
        dx, dy, dz = (
            rotation[0, 0] * dx + rotation[1, 0] * dy + rotation[2, 0] * dz,
            rotation[0, 1] * dx + rotation[1, 1] * dy + rotation[2, 1] * dz,
            rotation[0, 2] * dx + rotation[1, 2] * dy + rotation[2, 2] * dz,
        )
    ux, uy, uz = dx / radii[0], dy / radii[1], dz / radii[2]
    rho = np.sqrt(ux * ux + uy * uy + uz * uz)
    grad = np.sqrt((ux / radii[0]) ** 2 + (uy / radii[1]) ** 2 + (uz / radii[2]) ** 2)
    return (rho - 1.0) * rho / np.maximum(grad, 1e-6)


def capsule_sd(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    radius_a: float,
    radius_b: float,
) -> np.ndarray:
    """Signed distance (mm) to a tapered capsule from point ``a`` to ``b``."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) * np.float32(1.0 / float(ab @ ab)), 0.0, 1.0)
    d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
    return d - (float(radius_a) + t * float(radius_b - radius_a))


@dataclass(frozen=True)
class Profile:
    """A body segment whose axial cross-section is an ellipse varying with z (knots, mm)."""

    z: np.ndarray  # increasing
    half_width: np.ndarray  # x semi-axis
    half_depth: np.ndarray  # y semi-axis
    center_y: np.ndarray
    center_x: float = 0.0

    def shrunk(self, by_mm: float | np.ndarray) -> Profile:
        """The same profile with both semi-axes reduced by ``by_mm`` (e.g. a fat layer)."""
        return Profile(
            self.z,
            np.maximum(self.half_width - by_mm, 1.0),
            np.maximum(self.half_depth - by_mm, 1.0),
            self.center_y,
            self.center_x,
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame bounding box (lo, hi)."""
        lo = np.array(
            [
                self.center_x - self.half_width.max(),
                (self.center_y - self.half_depth).min(),
                self.z[0],
            ]
        )
        hi = np.array(
            [
                self.center_x + self.half_width.max(),
                (self.center_y + self.half_depth).max(),
                self.z[-1],
            ]
        )
        return lo, hi

    def sd_inplane(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate in-plane signed distance (mm) to the elliptic cross-section at each z."""
        # knots are linearly interpolated through a 1 mm lookup table (fast, float32)
        z0 = float(self.z[0])
        table_z = np.arange(z0, float(self.z[-1]) + 1.0, 1.0)
        idx = np.clip(((z - z0) + 0.5).astype(np.int32), 0, len(table_z) - 1)
        a = np.interp(table_z, self.z, self.half_width).astype(np.float32)[idx]
        b = np.interp(table_z, self.z, self.half_depth).astype(np.float32)[idx]
        yc = np.interp(table_z, self.z, self.center_y).astype(np.float32)[idx]
        ux, uy = (x - float(self.center_x)) / a, (y - yc) / b
        rho = np.sqrt(ux * ux + uy * uy)
        grad = np.sqrt((ux / a) ** 2 + (uy / b) ** 2)
        return (rho - 1.0) * rho / np.maximum(grad, 1e-6)

    def sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm): in-plane ellipse distance, capped at the z ends."""
        ends = np.maximum(float(self.z[0]) - z, z - float(self.z[-1]))
        return np.maximum(self.sd_inplane(x, y, z), ends)
