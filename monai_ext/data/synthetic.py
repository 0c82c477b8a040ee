"""Synthetic radiograph-like phantoms with known landmarks and pixel spacing: the default data.

Every phantom is drawn *from* its landmarks (bones are shapes whose corners, ends or extreme points
are the landmarks), so the landmarks are exactly where the anatomy is. Landmarks are ``(x, y)``
pixel-centre coordinates (x = column, y = row); the raster is ``(H, W)`` rows x columns and a pixel
centre ``(x, y)`` lies at ``(x * sx, y * sy)`` mm. As on a radiograph in standard orientation, the
patient's right is on the image left. Each image has a random pose (rotation within +-5 deg, scale
+-10 %, shift), random physical field of view (+-5 %) and a random pixel spacing; about one image in
five is anisotropic (``sy = sx * (1 +- up to 5 %)``) and its pixel grid is stretched accordingly.

Phantoms and landmark order:

* ``"limbs"``: standing AP full-length lower-limb radiograph (Adversarial PoseNet), 6 landmarks:
  ``femoral_head_R, knee_R, ankle_R, femoral_head_L, knee_L, ankle_L`` (femoral head centre, centre
  of the knee joint space, centre of the ankle joint). flip pairs R <-> L.
* ``"knees"``: bilateral standing AP knee radiograph (KNEEL), 8 landmarks per knee, right knee then
  left knee, each ``femur_lat_margin, femur_lat_condyle, femur_med_condyle, femur_med_margin,
  tibia_lat_margin, tibia_lat_spine, tibia_med_spine, tibia_med_margin`` with suffix ``_R`` / ``_L``:
  the outer (widest) points of the lateral/medial femoral condyles, the distal-most points of the
  two condyles, the outer edges of the lateral/medial tibial plateau and the tips of the lateral and
  medial tibial spines. Joint space widths vary per compartment (0.5-7 mm). flip pairs R <-> L.
* ``"spine"``: PA spine radiograph (AASCE), 17 vertebrae T1..L5 x 4 corners = 68 landmarks, for each
  vertebra top to bottom ``T1_TL, T1_TR, T1_BL, T1_BR, ...`` (top-left, top-right, bottom-left,
  bottom-right in image coordinates). Endplates are perpendicular to a smooth random scoliotic
  curve (plus a little wedging), so Cobb angles range from about 0 to 50 deg. flip pairs swap the
  left and right corners of each vertebra.
* ``"hand"``: PA left hand (thumb on the image right), 37 landmarks: for each finger from thumb to
  little finger ``thumb_tip, thumb_ip, thumb_mcp, thumb_cmc`` then ``<f>_tip, <f>_dip, <f>_pip,
  <f>_mcp, <f>_cmc`` for ``f`` in ``index, middle, ring, little`` (tips of the distal phalanges,
  joint centres, metacarpal bases), then 7 carpal bone centres ``scaphoid, lunate, triquetrum,
  trapezium, trapezoid, capitate, hamate``, then ``radial_styloid, radius_centre, radius_shaft,
  ulnar_styloid, ulna_head, ulna_shaft`` (styloid tips, centre of the distal radius articular
  surface, centre of the ulnar head, shaft axis points 30 mm proximal). Random finger spread and
  thumb abduction. No flip pairs: a mirrored left hand is a right hand with the same labels.

:func:`generate_dataset` writes a datalist (``"spacing_mode": "image"``, each row also records its
true ``"spacing"``) with images that vary the DICOM encoding so that readers get exercised; see its
docstring for which image uses which option.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from monai_ext.errors import LandmarkDataError
from monai_ext.utils import atomic_path, atomic_write

__all__ = [
    "PhantomSpec",
    "Phantom",
    "PHANTOMS",
    "make_phantom",
    "write_dicom",
    "write_nifti",
    "generate_dataset",
    "ensure_dataset",
    "DX_SOP_CLASS_UID",
]

DX_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSpec:
    """Static description of a phantom kind.

    ``fov_mm`` is the nominal field of view ``(width, height)`` in mm and ``spacing_mm`` the range
    of the column spacing ``sx`` in mm/pixel, chosen so images are roughly 200-400 px on the long side.
    """

    name: str
    landmarks: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    description: str
    fov_mm: tuple[float, float]
    spacing_mm: tuple[float, float]


def _lr_pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    index = {n: i for i, n in enumerate(names)}
    return tuple((i, index[n[:-2] + "_L"]) for i, n in enumerate(names) if n.endswith("_R"))


_LIMB_NAMES = tuple(f"{p}_{s}" for s in "RL" for p in ("femoral_head", "knee", "ankle"))
_KNEE_POINTS = (
    "femur_lat_margin",
    "femur_lat_condyle",
    "femur_med_condyle",
    "femur_med_margin",
    "tibia_lat_margin",
    "tibia_lat_spine",
    "tibia_med_spine",
    "tibia_med_margin",
)
_KNEE_NAMES = tuple(f"{p}_{s}" for s in "RL" for p in _KNEE_POINTS)
_VERTEBRAE = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
_SPINE_NAMES = tuple(f"{v}_{c}" for v in _VERTEBRAE for c in ("TL", "TR", "BL", "BR"))
_FINGERS = ("index", "middle", "ring", "little")
_CARPALS = ("scaphoid", "lunate", "triquetrum", "trapezium", "trapezoid", "capitate", "hamate")
_HAND_NAMES = (
    ("thumb_tip", "thumb_ip", "thumb_mcp", "thumb_cmc")
    + tuple(f"{f}_{j}" for f in _FINGERS for j in ("tip", "dip", "pip", "mcp", "cmc"))
    + _CARPALS
    + ("radial_styloid", "radius_centre", "radius_shaft", "ulnar_styloid", "ulna_head", "ulna_shaft")
)

PHANTOMS: dict[str, PhantomSpec] = {
    "limbs": PhantomSpec(
        name="limbs",
        landmarks=_LIMB_NAMES,
        flip_pairs=_lr_pairs(_LIMB_NAMES),
        description="Standing AP full-length lower limbs: femoral head, knee and ankle centres, both legs.",
        fov_mm=(480.0, 1150.0),
        spacing_mm=(3.0, 4.2),
    ),
    "knees": PhantomSpec(
        name="knees",
        landmarks=_KNEE_NAMES,
        flip_pairs=_lr_pairs(_KNEE_NAMES),
        description="Bilateral AP knees: femoral condyle and tibial plateau landmarks, 8 per knee.",
        fov_mm=(400.0, 240.0),
        spacing_mm=(1.1, 1.7),
    ),
    "spine": PhantomSpec(
        name="spine",
        landmarks=_SPINE_NAMES,
        flip_pairs=tuple(
            (4 * v + a, 4 * v + b) for v in range(len(_VERTEBRAE)) for a, b in ((0, 1), (2, 3))
        ),
        description="PA scoliotic spine: 4 vertebral body corners of T1..L5 (AASCE order).",
        fov_mm=(300.0, 620.0),
        spacing_mm=(1.7, 2.5),
    ),
    "hand": PhantomSpec(
        name="hand",
        landmarks=_HAND_NAMES,
        flip_pairs=(),
        description="PA left hand: fingertips, finger joints, metacarpal bases, carpal centres, wrist.",
        fov_mm=(220.0, 290.0),
        spacing_mm=(0.8, 1.15),
    ),
}


@dataclass
class Phantom:
    """One synthetic radiograph.

    ``image``: ``(H, W)`` float32 raster (rows x columns) with values in ``[0, 1]``, bright = bone.
    ``landmarks``: ``(K, 2)`` float64 ``(x, y)`` pixel-centre coordinates, NaN rows are missing.
    ``spacing``: ``(sx, sy)`` mm/pixel along x (columns) and y (rows).
    """

    kind: str
    seed: int
    image: np.ndarray
    landmarks: np.ndarray
    spacing: tuple[float, float]

    @property
    def names(self) -> tuple[str, ...]:
        return PHANTOMS[self.kind].landmarks

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        return PHANTOMS[self.kind].flip_pairs


# ----------------------------------------------------------------------------------------------
# shapes (mm, signed distance: negative inside)
# ----------------------------------------------------------------------------------------------


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


@dataclass(frozen=True)
class _Similarity:
    """``p -> scale * R(angle) (p - centre) + centre + shift`` on (x, y) mm points."""

    scale: float
    angle: float
    centre: np.ndarray
    shift: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return (p - self.centre) @ (self.scale * _rot(self.angle)).T + self.centre + self.shift


class _Shape(Protocol):
    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> tuple[float, float, float, float]: ...

    def moved(self, t: _Similarity) -> _Shape: ...


@dataclass(frozen=True)
class _Capsule:
    """Segment ``p0 -> p1`` with radius interpolated from ``r0`` to ``r1`` (a tapered bone shaft)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float

    def sdf(self, x, y):
        d = self.p1 - self.p0
        t = np.clip(((x - self.p0[0]) * d[0] + (y - self.p0[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
        return np.hypot(x - self.p0[0] - t * d[0], y - self.p0[1] - t * d[1]) - (self.r0 + t * (self.r1 - self.r0))

    def bounds(self):
        r = max(self.r0, self.r1)
        lo, hi = np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r
        return lo[0], lo[1], hi[0], hi[1]

    def moved(self, t):
        return _Capsule(t(self.p0), t(self.p1), self.r0 * t.scale, self.r1 * t.scale)


@dataclass(frozen=True)
class _Ellipse:
    """Ellipse with centre ``c``, semi-axes ``a`` (along ``angle``) and ``b``."""

    c: np.ndarray
    a: float
    b: float
    angle: float = 0.0

    def sdf(self, x, y):
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.c[0], y - self.c[1]
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        k = np.sqrt((u / self.a) ** 2 + (v / self.b) ** 2)
        g = np.sqrt((u / self.a**2) ** 2 + (v / self.b**2) ** 2)
        ratio = np.where(g > 1e-12, k / np.maximum(g, 1e-12), min(self.a, self.b))
        return (k - 1.0) * ratio  # first-order distance to the boundary

    def bounds(self):
        r = max(self.a, self.b)
        return self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r

    def moved(self, t):
        return _Ellipse(t(self.c), self.a * t.scale, self.b * t.scale, self.angle + t.angle)


@dataclass(frozen=True)
class _Polygon:
    """Convex polygon (vertices in either order); its corners stay sharp, so they can be landmarks."""

    pts: np.ndarray

    def sdf(self, x, y):
        p = self.pts
        q = np.roll(p, -1, axis=0)
        area2 = float(np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]))
        out = None
        for a, b in zip(p, q):
            e = b - a
            n = np.array([e[1], -e[0]]) if area2 > 0 else np.array([-e[1], e[0]])
            n = n / max(float(np.hypot(*n)), 1e-12)
            d = (x - a[0]) * n[0] + (y - a[1]) * n[1]
            out = d if out is None else np.maximum(out, d)
        return out

    def bounds(self):
        lo, hi = self.pts.min(axis=0), self.pts.max(axis=0)
        return lo[0], lo[1], hi[0], hi[1]

    def moved(self, t):
        return _Polygon(t(self.pts))


@dataclass(frozen=True)
class _Layer:
    """A shape with an attenuation ``density``; ``cortex`` (mm) > 0 gives a bright bony rim,
    otherwise it is soft tissue (negative density: air, e.g. lungs) with a blurred edge."""

    shape: _Shape
    density: float
    cortex: float = 0.0


def _bone(shape: _Shape, density: float = 1.0, cortex: float = 2.0) -> _Layer:
    return _Layer(shape, density, cortex)


def _tissue(shape: _Shape, density: float) -> _Layer:
    return _Layer(shape, density, 0.0)


def _v(x: float, y: float) -> np.ndarray:
    return np.array([x, y], dtype=np.float64)


def _unit(angle: float) -> np.ndarray:
    """Unit vector pointing down the image (+y) rotated by ``angle`` radians towards +x."""
    return _v(math.sin(angle), math.cos(angle))


def _perp(u: np.ndarray, towards_x: float) -> np.ndarray:
    """Unit vector perpendicular to ``u`` whose x component has the sign of ``towards_x``."""
    p = _v(u[1], -u[0]) / np.hypot(*u)
    return p if p[0] * towards_x >= 0 else -p


# ----------------------------------------------------------------------------------------------
# anatomy builders: canonical mm frame, return (landmarks (K, 2) mm, layers)
# ----------------------------------------------------------------------------------------------


def _build_limbs(rng: np.random.Generator) -> tuple[np.ndarray, list[_Layer]]:
    hips = rng.uniform(165.0, 205.0)  # distance between femoral head centres
    femur0, tibia0 = rng.uniform(410.0, 480.0), rng.uniform(350.0, 410.0)
    gap = rng.uniform(2.0, 3.5)  # half joint space
    layers = [
        _tissue(_Ellipse(_v(0, -15), hips / 2 + 110, 140), 0.28),
        _bone(_Ellipse(_v(-hips / 2 + 5, -95), 62, 52, 0.35), 0.45, 3.0),
        _bone(_Ellipse(_v(hips / 2 - 5, -95), 62, 52, -0.35), 0.45, 3.0),
        _bone(_Polygon(np.array([[-38, -135], [38, -135], [14, -15], [-14, -15]], float)), 0.5, 3.0),
    ]
    marks = []
    for lat in (-1.0, 1.0):  # right leg (image left, lateral = -x), then left leg
        head = _v(lat * hips / 2, 0.0)
        phi_f = -lat * math.radians(rng.uniform(1.5, 5.0))  # femur runs down and medially
        u_f = _unit(phi_f)
        knee = head + femur0 * rng.uniform(0.98, 1.02) * u_f
        hka = math.radians(float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0)))
        u_t = _unit(phi_f + hka)
        ankle = knee + tibia0 * rng.uniform(0.98, 1.02) * u_t
        marks += [head, knee, ankle]
        lf, lt = _perp(u_f, lat), _perp(u_t, lat)
        r_head = rng.uniform(21.0, 25.0)
        layers += [
            _tissue(_Capsule(head + 25 * lf - 10 * u_f, knee, 82, 52), 0.30),
            _tissue(_Capsule(knee, ankle + 25 * u_t, 52, 30), 0.28),
            _tissue(_Ellipse(ankle + 55 * u_t, 45, 35), 0.28),
            # pelvis around the hip: pubic ramus and ischium
            _bone(_Capsule(head - 30 * lf + 20 * u_f, _v(lat * 8, 35), 9, 8), 0.5, 2.5),
            _bone(_Ellipse(head - 22 * lf + 58 * u_f, 17, 22), 0.4, 3.0),
            # femur
            _bone(_Ellipse(head, r_head, r_head), 1.0, 3.0),
            _bone(_Capsule(head, head + 42 * lf + 30 * u_f, 14, 16), 0.9, 2.5),
            _bone(_Ellipse(head + 62 * lf + 22 * u_f, 15, 22), 0.8, 2.5),
            _bone(_Ellipse(head + 18 * lf + 68 * u_f, 8, 10), 0.7, 2.0),
            _bone(_Capsule(head + 45 * lf + 40 * u_f, knee - 62 * u_f, 15, 16), 1.0, 4.0),
            _bone(_Polygon(np.array([knee - 70 * u_f - 17 * lf, knee - 70 * u_f + 17 * lf,
                                     knee - (gap + 16) * u_f + 40 * lf, knee - (gap + 16) * u_f - 40 * lf])),
                  0.9, 2.5),
            _bone(_Ellipse(knee - (gap + 14) * u_f + 21 * lf, 19, 14), 0.9, 2.5),
            _bone(_Ellipse(knee - (gap + 14) * u_f - 21 * lf, 19, 14), 0.9, 2.5),
            _bone(_Ellipse(knee - 32 * u_f + 3 * lf, 20, 24), 0.35, 2.0),
            # tibia, fibula, ankle
            _bone(_Polygon(np.array([knee + gap * u_t - 38 * lt, knee + gap * u_t + 38 * lt,
                                     knee + 40 * u_t + 19 * lt, knee + 40 * u_t - 19 * lt])), 0.9, 2.5),
            _bone(_Capsule(knee + 30 * u_t, ankle - 55 * u_t, 15, 11), 1.0, 4.0),
            _bone(_Polygon(np.array([ankle - 65 * u_t - 12 * lt, ankle - 65 * u_t + 12 * lt,
                                     ankle - gap * u_t + 22 * lt, ankle - gap * u_t - 22 * lt])), 0.9, 2.5),
            _bone(_Ellipse(ankle - 22 * lt + 4 * u_t, 7, 12), 0.8, 2.0),
            _bone(_Ellipse(knee + 32 * lt + 28 * u_t, 9, 11), 0.7, 2.0),
            _bone(_Capsule(knee + 33 * lt + 35 * u_t, ankle + 24 * lt, 5.5, 5), 0.7, 2.0),
            _bone(_Ellipse(ankle + 25 * lt + 6 * u_t, 7, 13), 0.7, 2.0),
            _bone(_Ellipse(ankle + (gap + 14) * u_t, 22, 14), 0.9, 2.5),
            _bone(_Ellipse(ankle + 50 * u_t, 28, 22), 0.5, 2.5),
        ]
    return np.stack(marks), layers


def _build_knees(rng: np.random.Generator) -> tuple[np.ndarray, list[_Layer]]:
    spread = rng.uniform(150.0, 210.0)  # knee centre to knee centre
    layers: list[_Layer] = []
    marks = []
    for lat in (-1.0, 1.0):  # right knee (image left, lateral = -x), then left knee
        c = _v(lat * spread / 2, 0.0)
        n = _unit(math.radians(rng.normal(0.0, 2.0)))  # joint-line normal, pointing to the tibia
        e = _perp(n, lat)  # along the joint line, towards lateral
        u_f = _unit(-lat * math.radians(rng.uniform(4.0, 8.0)))  # femoral shaft, down and medial
        u_t = _unit(math.atan2(n[0], n[1]) + math.radians(rng.normal(0.0, 2.0)))
        wf = rng.uniform(72.0, 88.0)  # condylar width
        wt = wf * rng.uniform(0.98, 1.06)  # plateau width
        jsw_lat, jsw_med = rng.uniform(0.5, 7.0, size=2)
        bulge = 12.0  # height of the widest condylar point above its distal point
        cond = 0.27 * wf  # condyle centre offset from the joint centre
        pts = [
            c + e * wf / 2 - n * (jsw_lat + bulge),
            c + e * cond - n * jsw_lat,
            c - e * cond - n * jsw_med,
            c - e * wf / 2 - n * (jsw_med + bulge),
            c + e * wt / 2 + n * 2.0,
            c + e * rng.uniform(4.0, 7.0) - n * rng.uniform(4.0, 8.0),
            c - e * rng.uniform(4.0, 7.0) - n * rng.uniform(4.0, 8.0),
            c - e * wt / 2 + n * 1.0,
        ]
        marks += pts
        shaft_f = (pts[0] + pts[3]) / 2 - 60 * u_f
        lf = _perp(u_f, lat)
        shaft_t = c + 45 * u_t
        lt = _perp(u_t, lat)
        half = wf / 2 - cond  # condyle semi-axis along the joint line reaches the margin exactly
        angle = math.atan2(e[1], e[0])
        layers += [
            _tissue(_Capsule(c - 220 * u_f, c, 70, 62), 0.30),
            _tissue(_Capsule(c, c + 220 * u_t, 62, 50), 0.30),
            # femur: shaft, metaphysis, condyles, patella
            _bone(_Capsule(shaft_f - 200 * u_f, shaft_f, 15, 17), 1.0, 4.0),
            _bone(_Polygon(np.array([shaft_f + 19 * lf, shaft_f - 19 * lf,
                                     c - e * (wf / 2) - n * (jsw_med + bulge),
                                     c + e * (wf / 2) - n * (jsw_lat + bulge)])), 0.85, 2.0),
            _bone(_Ellipse(c + e * cond - n * (jsw_lat + bulge), half, bulge, angle), 0.9, 2.0),
            _bone(_Ellipse(c - e * cond - n * (jsw_med + bulge), half, bulge, angle), 0.9, 2.0),
            _bone(_Ellipse(c - n * 38 + e * 3, 21, 25), 0.3, 2.0),
            # tibia: plateau, spines, shaft; fibula
            _bone(_Polygon(np.array([pts[4], c + e * 9, c - e * 9, pts[7],
                                     shaft_t - 18 * lt, shaft_t + 18 * lt])), 0.9, 2.0),
            _bone(_Polygon(np.array([c + e * 1.0 + n * 0.5, pts[5], c + e * 12 + n * 0.5])), 0.9, 1.0),
            _bone(_Polygon(np.array([c - e * 1.0 + n * 0.5, pts[6], c - e * 12 + n * 0.5])), 0.9, 1.0),
            _bone(_Capsule(shaft_t - 5 * u_t, shaft_t + 220 * u_t, 18, 15), 1.0, 4.0),
            _bone(_Ellipse(c + e * (wt / 2 - 4) + n * 24, 9, 11), 0.7, 2.0),
            _bone(_Capsule(c + e * (wt / 2 - 4) + n * 30, c + e * (wt / 2 - 4) + n * 230, 6, 5), 0.7, 2.0),
        ]
    return np.stack(marks), layers


def _build_spine(rng: np.random.Generator) -> tuple[np.ndarray, list[_Layer]]:
    n_t, n_l = 12, 5
    heights = np.concatenate([np.linspace(14, 22, n_t), np.linspace(24, 27, n_l)]) * rng.uniform(0.95, 1.05, 17)
    widths = np.concatenate([np.linspace(28, 40, n_t), np.linspace(42, 50, n_l)]) * rng.uniform(0.95, 1.05, 17)
    discs = np.concatenate([np.linspace(4, 6, n_t), np.linspace(8, 11, n_l)]) * rng.uniform(0.85, 1.15, 17)
    total = float(heights.sum() + discs[:-1].sum())
    amps = rng.uniform(-1, 1, 3) * np.array([40.0, 20.0, 8.0])
    phases = rng.uniform(0, 2 * math.pi, 3)
    k = np.arange(1, 4)

    def curve(y: float) -> tuple[float, float]:  # lateral offset and its slope dx/dy
        arg = math.pi * k * y / total + phases
        x = float(np.sum(amps * np.sin(arg)))
        return x - float(np.sum(amps * np.sin(phases))), float(np.sum(amps * np.cos(arg) * math.pi * k / total))

    def endplate(y: float, width: float, wedge: float) -> tuple[np.ndarray, np.ndarray]:
        x, slope = curve(y)
        tilt = math.atan(slope) + wedge
        e = _v(math.cos(tilt), -math.sin(tilt))  # endplate direction, perpendicular to the curve
        centre = _v(x, y)
        return centre - e * width / 2, centre + e * width / 2

    layers = [
        _tissue(_Capsule(_v(0, -60), _v(0, total + 150), 145, 150), 0.30),
        _tissue(_Ellipse(_v(-75, 0.32 * total), 55, 0.3 * total), -0.12),
        _tissue(_Ellipse(_v(75, 0.32 * total), 55, 0.3 * total), -0.12),
    ]
    marks = []
    y = 0.0
    for i in range(17):
        wedge_t, wedge_b = np.clip(rng.normal(0.0, math.radians(1.5), 2), -math.radians(2.5), math.radians(2.5))
        tl, tr = endplate(y, widths[i], wedge_t)
        bl, br = endplate(y + heights[i], widths[i] * 1.02, wedge_b)
        marks += [tl, tr, bl, br]
        centre = (tl + tr + bl + br) / 4
        across = (tr + br - tl - bl) / 2
        across /= np.hypot(*across)
        down = _v(-across[1], across[0])
        h, w = heights[i], widths[i]
        angle = math.atan2(across[1], across[0])
        layers += [
            _bone(_Polygon(np.array([tl, tr, br, bl])), 0.9, 2.0),
            _bone(_Ellipse(centre - across * 0.3 * w - down * 0.1 * h, 0.09 * w, 0.22 * h, angle), 0.5, 1.5),
            _bone(_Ellipse(centre + across * 0.3 * w - down * 0.1 * h, 0.09 * w, 0.22 * h, angle), 0.5, 1.5),
            _bone(_Ellipse(centre + down * 0.25 * h, 3.0, 0.3 * h, angle), 0.5, 1.0),
        ]
        if i < 10:  # ribs from the thoracic vertebrae
            for side in (-1.0, 1.0):
                p0 = centre + side * across * (w / 2 + 6)
                chain = [p0, p0 + _v(side * 45, -8), p0 + _v(side * 95, 12), p0 + _v(side * 125, 45 + 4 * i)]
                layers += [_bone(_Capsule(a, b, 4.5, 4.0), 0.35, 1.5) for a, b in zip(chain[:-1], chain[1:])]
        y += heights[i] + (discs[i] if i < 16 else 0.0)
    base = (marks[-2] + marks[-1]) / 2
    for side in (-1.0, 1.0):
        layers.append(_bone(_Capsule(_v(side * 12, -22), _v(side * 140, -40), 7, 8), 0.6, 2.5))  # clavicles
        layers.append(_bone(_Ellipse(base + _v(side * 88, 38), 60, 45, side * 0.45), 0.45, 3.0))  # iliac wings
    layers.append(_bone(_Polygon(np.array([marks[-2] + _v(-22, 8), marks[-1] + _v(22, 8),
                                           base + _v(10, 95), base + _v(-10, 95)])), 0.55, 2.5))  # sacrum
    return np.stack(marks), layers


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``(N, 2)`` points, counter-clockwise (monotone chain)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def turn(o, a, b) -> float:  # z of the 2D cross product (a - o) x (b - o); np.cross drops 2-vectors in numpy 2
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _build_hand(rng: np.random.Generator) -> tuple[np.ndarray, list[_Layer]]:
    def jit() -> float:
        return float(rng.uniform(0.95, 1.05))

    spread = rng.uniform(0.7, 1.6)
    # thumb, index, middle, ring, little: metacarpal base (mm), axis angle (deg, + = towards the
    # thumb), bone lengths and radii from the metacarpal to the distal phalanx
    bases = [_v(27, -38), _v(9, -46), _v(-2, -47), _v(-12, -45), _v(-21, -41)]
    angles = [rng.uniform(30.0, 60.0), 7 * spread, 0.0, -7 * spread, -15 * spread]
    lengths = [(46, 32, 23), (68, 40, 23, 17), (65, 45, 27, 19), (58, 42, 26, 18), (54, 33, 19, 16)]
    radii = [(5.0, 4.5, 3.6), (4.5, 4.3, 3.6, 3.0), (4.7, 4.5, 3.8, 3.2), (4.4, 4.2, 3.6, 3.0), (4.0, 3.8, 3.2, 2.8)]
    jitter = np.clip(rng.normal(0.0, 1.5, 5), -3.0, 3.0)
    gap = rng.uniform(0.8, 1.5)  # half joint space
    layers: list[_Layer] = [_tissue(_Capsule(_v(0, 10), _v(0, 140), 36, 38), 0.28)]
    fingers = []
    for f in range(5):
        joints = [bases[f]]
        direction = math.radians(180.0 - angles[f] - jitter[f])  # up the image, fanned out
        for j, length in enumerate(lengths[f]):
            joints.append(joints[-1] + length * jit() * _unit(direction))
            # phalanges bend slightly towards the middle finger
            direction += math.radians(rng.normal(0.0, 3.0) - (1.0 if f > 0 and j > 0 else 0.0) * (f - 2))
        last = len(joints) - 2
        for j in range(last + 1):
            a, b = joints[j], joints[j + 1]
            u = (b - a) / np.hypot(*(b - a))
            r0 = radii[f][j]
            r1 = r0 * (0.65 if j == last else 0.85)
            start = r0 + (0.0 if j == 0 else gap)  # the metacarpal starts exactly at its base
            end = r1 + (0.0 if j == last else gap)  # the distal phalanx ends exactly at the tip
            layers.append(_bone(_Capsule(a + start * u, b - end * u, r0, r1), 0.9, 1.5))
        layers.append(_tissue(_Capsule(joints[1], joints[-1], 11 if f == 0 else 9, 8), 0.25))
        fingers.append(joints[::-1])  # tip first
    palm = [finger[-2] for finger in fingers] + [fingers[0][-1], fingers[4][-1] + _v(-8, 0), _v(-32, 5), _v(30, 5)]
    layers.append(_tissue(_Polygon(_convex_hull(np.stack(palm))), 0.28))
    carpal_c = [_v(16, -13), _v(-2, -13), _v(-18, -17), _v(23, -30), _v(11, -34), _v(-2, -32), _v(-14, -31)]
    carpal_ab = [(8, 6), (7.5, 7), (6.5, 6), (7, 6), (6, 5.5), (6.5, 9), (7, 8)]
    carpals = []
    for c, (a, b) in zip(carpal_c, carpal_ab):
        c = c + rng.normal(0.0, 1.0, 2)
        carpals.append(c)
        layers.append(_bone(_Ellipse(c, a * jit(), b * jit(), rng.uniform(-0.5, 0.5)), 0.8, 1.5))
    notch = _v(-5, rng.uniform(-1.0, 1.0))
    styloid_r = _v(30, rng.uniform(-6.0, -3.0))
    radius_c = (notch + styloid_r) / 2
    radius_shaft = _v(11, 30)
    ulna_head = _v(-17, rng.uniform(3.0, 7.0))
    styloid_u = ulna_head + _v(-7, -6) * jit()
    to_tip = (styloid_u - ulna_head) / np.hypot(*(styloid_u - ulna_head))
    ulna_shaft = _v(-16, 30)
    layers += [
        _bone(_Polygon(np.array([notch, styloid_r, _v(25, 26), _v(-3, 26)])), 0.9, 2.0),
        _bone(_Capsule(_v(11, 20), _v(10, 140), 11, 10), 0.9, 2.5),
        _bone(_Ellipse(ulna_head, 7.5, 6.5), 0.8, 2.0),
        _bone(_Capsule(ulna_head, styloid_u - 2.0 * to_tip, 3.0, 2.0), 0.8, 1.0),
        _bone(_Capsule(ulna_head + _v(0, 4), _v(-15, 140), 7, 7), 0.8, 2.5),
    ]
    marks = [p for finger in fingers for p in finger] + carpals
    marks += [styloid_r, radius_c, radius_shaft, styloid_u, ulna_head, ulna_shaft]
    return np.stack(marks), layers


_BUILDERS = {"limbs": _build_limbs, "knees": _build_knees, "spine": _build_spine, "hand": _build_hand}


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


def _render(layers: Sequence[_Layer], shape_hw: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Sum the layers' attenuation on the ``(H, W)`` grid of pixel centres ``(x * sx, y * sy)`` mm."""
    h, w = shape_hw
    sx, sy = spacing
    att = np.zeros((h, w), dtype=np.float64)
    bone_edge = 0.35 * min(sx, sy)
    for layer in layers:
        soft = bone_edge if layer.cortex > 0 else 4.0
        x0, y0, x1, y1 = layer.shape.bounds()
        pad = 4.0 * soft + layer.cortex
        c0, c1 = max(0, math.floor((x0 - pad) / sx)), min(w, math.ceil((x1 + pad) / sx) + 1)
        r0, r1 = max(0, math.floor((y0 - pad) / sy)), min(h, math.ceil((y1 + pad) / sy) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = (np.arange(c0, c1) * sx)[None, :]
        ys = (np.arange(r0, r1) * sy)[:, None]
        d = layer.shape.sdf(xs, ys)
        inside = 0.5 * (1.0 - np.tanh(d / (2.0 * soft)))  # logistic step, overflow free
        if layer.cortex > 0:
            half = layer.cortex / 2
            value = 0.55 * inside + 0.45 * np.exp(-(((d + half) / half) ** 2))
        else:
            value = inside
        att[r0:r1, c0:c1] += layer.density * value
    return att


def _kind_rng(kind: str, seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode()), stream])


def make_phantom(kind: str, seed: int, missing_fraction: float = 0.0) -> Phantom:
    """Generate one phantom of ``kind`` (a key of :data:`PHANTOMS`), deterministic in ``seed``.

    ``missing_fraction``: probability that each landmark is marked missing (NaN); it is drawn from a
    separate random stream, so the image and the other landmarks do not depend on it.
    """
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {sorted(PHANTOMS)}")
    if not 0.0 <= missing_fraction <= 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
    spec = PHANTOMS[kind]
    rng = _kind_rng(kind, seed, 0)

    sx = round(float(rng.uniform(*spec.spacing_mm)), 4)
    sy = round(sx * (1.0 + rng.uniform(-0.05, 0.05)), 4) if rng.random() < 0.2 else sx
    fov_w, fov_h = np.asarray(spec.fov_mm) * rng.uniform(0.95, 1.05, 2)
    w, h = int(round(fov_w / sx)), int(round(fov_h / sy))
    extent = _v((w - 1) * sx, (h - 1) * sy)  # mm between the first and last pixel centres

    marks, layers = _BUILDERS[kind](rng)
    lo, hi = marks.min(axis=0), marks.max(axis=0)
    pose = _Similarity(rng.uniform(0.9, 1.1), math.radians(rng.uniform(-5.0, 5.0)), (lo + hi) / 2, _v(0, 0))
    posed = pose(marks)
    lo, hi = posed.min(axis=0), posed.max(axis=0)
    margin = 0.04 * extent
    slack = np.maximum(extent - 2 * margin - (hi - lo), 0.0)
    target = extent / 2 + rng.uniform(-0.3, 0.3, 2) * slack
    pose = _Similarity(pose.scale, pose.angle, pose.centre, target - (lo + hi) / 2)

    att = _render([_Layer(lay.shape.moved(pose), lay.density, lay.cortex) for lay in layers], (h, w), (sx, sy))
    att *= rng.uniform(0.8, 1.2)  # exposure
    image = 1.0 - np.exp(-att)
    yy, xx = np.mgrid[0:h, 0:w]
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    image *= 1.0 + gx * (xx / max(w - 1, 1) - 0.5) + gy * (yy / max(h - 1, 1) - 0.5)  # heel effect
    image += rng.uniform(0.0, 0.06) + rng.normal(0.0, rng.uniform(0.015, 0.04), (h, w))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    landmarks = np.round(pose(marks) / _v(sx, sy), 4)  # 1e-4 px: exact for all purposes, short in JSON
    if missing_fraction > 0:
        landmarks[_kind_rng(kind, seed, 1).random(len(landmarks)) < missing_fraction] = np.nan
    return Phantom(kind=kind, seed=int(seed), image=image, landmarks=landmarks, spacing=(sx, sy))


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------

_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing")
_PHOTOMETRIC = ("MONOCHROME2", "MONOCHROME1")


def write_dicom(
    path: str | os.PathLike,
    image_raster: np.ndarray,
    spacing: Sequence[float] | None,
    *,
    spacing_tag: str = "PixelSpacing",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
) -> Path:
    """Write a 2D ``(H, W)`` raster as a DX DICOM (Explicit VR Little Endian, uint16), atomically.

    The raster (expected in ``[0, 1]``, clipped) is quantised to stored values
    ``0 .. 2**bits_stored - 1``; with ``"MONOCHROME1"`` the stored values are inverted so the image
    *displays* the same. ``RescaleSlope``/``RescaleIntercept`` are written as given (modality values
    = stored * slope + intercept). ``spacing`` is ``(sx, sy)`` mm; it is written to ``spacing_tag``
    (``"PixelSpacing"`` or ``"ImagerPixelSpacing"``) in DICOM order ``[sy, sx]`` (row spacing first);
    ``None`` writes no spacing at all. UIDs are derived from the file name and content (deterministic).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
    from pydicom.valuerep import format_number_as_ds

    path = Path(path)
    raster = np.asarray(image_raster, dtype=np.float64)
    if raster.ndim != 2:
        raise ValueError(f"{path}: image_raster must be 2D (H, W), got shape {raster.shape}")
    if spacing_tag not in _SPACING_TAGS:
        raise ValueError(f"{path}: spacing_tag must be one of {_SPACING_TAGS}, got {spacing_tag!r}")
    if photometric not in _PHOTOMETRIC:
        raise ValueError(f"{path}: photometric must be one of {_PHOTOMETRIC}, got {photometric!r}")
    if not 8 <= int(bits_stored) <= 16:
        raise ValueError(f"{path}: bits_stored must be in 8..16, got {bits_stored}")
    if spacing is not None and (len(spacing) != 2 or not all(float(s) > 0 for s in spacing)):
        raise ValueError(f"{path}: spacing must be two positive numbers (sx, sy), got {spacing!r}")
    top = 2 ** int(bits_stored) - 1
    stored = np.rint(np.clip(np.nan_to_num(raster), 0.0, 1.0) * top).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    pixel_bytes = stored.astype("<u2").tobytes()

    def ds(v: float) -> str:
        return format_number_as_ds(float(v))

    entropy = [path.name, hashlib.sha256(pixel_bytes).hexdigest(), repr(spacing), spacing_tag, photometric,
               str(bits_stored), repr(rescale_slope), repr(rescale_intercept)]
    sop_uid = generate_uid(entropy_srcs=entropy + ["sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    dcm = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dcm.is_little_endian = True
    dcm.is_implicit_VR = False
    dcm.SOPClassUID = DX_SOP_CLASS_UID
    dcm.SOPInstanceUID = sop_uid
    dcm.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    dcm.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    dcm.PatientName = "Synthetic^Phantom"
    dcm.PatientID = path.stem
    dcm.Modality = "DX"
    dcm.PresentationIntentType = "FOR PRESENTATION"
    dcm.ImageType = ["DERIVED", "SECONDARY"]
    dcm.SeriesNumber = 1
    dcm.InstanceNumber = 1
    dcm.Rows, dcm.Columns = stored.shape
    if spacing is not None:
        setattr(dcm, spacing_tag, [ds(spacing[1]), ds(spacing[0])])  # DICOM order: row spacing, column spacing
    dcm.SamplesPerPixel = 1
    dcm.PhotometricInterpretation = photometric
    dcm.BitsAllocated = 16
    dcm.BitsStored = int(bits_stored)
    dcm.HighBit = int(bits_stored) - 1
    dcm.PixelRepresentation = 0
    dcm.RescaleSlope = ds(rescale_slope)
    dcm.RescaleIntercept = ds(rescale_intercept)
    dcm.RescaleType = "US"
    dcm.WindowCenter = ds(top / 2 * rescale_slope + rescale_intercept)
    dcm.WindowWidth = ds(abs(top * rescale_slope))
    dcm.PixelData = pixel_bytes
    dcm["PixelData"].VR = "OW"
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(str(tmp), dcm, write_like_original=False)
    return path


def write_nifti(path: str | os.PathLike, image_raster: np.ndarray, spacing: Sequence[float]) -> Path:
    """Write a 2D ``(H, W)`` raster as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    The data array is stored as ``(W, H) = raster.T`` (axis 0 is x, as MONAI loads it) with affine
    ``diag(sx, sy, 1, 1)``.
    """
    import nibabel as nib

    path = Path(path)
    raster = np.asarray(image_raster, dtype=np.float32)
    if raster.ndim != 2:
        raise ValueError(f"{path}: image_raster must be 2D (H, W), got shape {raster.shape}")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"{path}: NIfTI file name must end with .nii or .nii.gz")
    sx, sy = (float(s) for s in spacing)
    img = nib.Nifti1Image(np.ascontiguousarray(raster.T), np.diag([sx, sy, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    with atomic_write(path, "wb") as f:
        f.write(payload)
    return path


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


def _dicom_options(index: int) -> dict:
    """Encoding options of the ``index``-th image of a dataset (over all splits, in order)."""
    opts: dict = {}
    if index % 4 == 1:
        opts["spacing_tag"] = "ImagerPixelSpacing"
    if index % 5 == 3:
        opts["photometric"] = "MONOCHROME1"
    if index % 3 == 2:
        opts.update(rescale_slope=0.5, rescale_intercept=-100.0)
    if index % 7 == 4:
        opts["bits_stored"] = 16
    return opts


def generate_dataset(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    n_train: int = 24,
    n_val: int = 8,
    n_test: int = 8,
    seed: int = 0,
    image_format: str = "dicom",
    missing_fraction: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic dataset and return the path of its ``datalist.json``.

    Images go to ``out_dir/images/<split>_<nnn>.dcm`` (or ``.nii.gz``); the datalist has
    ``"spacing_mode": "image"`` and each row also records its true ``"spacing"`` ``[sx, sy]``.
    Everything is written to a temporary sibling folder that is renamed onto ``out_dir`` at the
    end, so an interrupted run leaves nothing behind. An existing non-empty ``out_dir`` raises
    ``FileExistsError`` unless ``overwrite`` (then it is replaced).

    DICOM images (index ``i`` counted over training, validation, test in order) vary the encoding:
    ``ImagerPixelSpacing`` instead of ``PixelSpacing`` when ``i % 4 == 1``, ``MONOCHROME1`` when
    ``i % 5 == 3``, ``RescaleSlope 0.5 / RescaleIntercept -100`` when ``i % 3 == 2``, 16 stored bits
    (instead of 12) when ``i % 7 == 4``.
    """
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {sorted(PHANTOMS)}")
    if image_format not in ("dicom", "nifti"):
        raise ValueError(f"image_format must be 'dicom' or 'nifti', got {image_format!r}")
    if min(n_train, n_val, n_test) < 0:
        raise ValueError(f"image counts must be >= 0, got n_train={n_train}, n_val={n_val}, n_test={n_test}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: directory exists and is not empty (pass overwrite=True to replace it)")
    spec = PHANTOMS[kind]
    splits = {"training": int(n_train), "validation": int(n_val), "test": int(n_test)}
    seeds = np.random.SeedSequence([int(seed), zlib.crc32(kind.encode())]).generate_state(sum(splits.values()))
    suffix = ".dcm" if image_format == "dicom" else ".nii.gz"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        datalist: dict = {
            "name": f"synthetic_{kind}",
            "description": spec.description,
            "landmarks": list(spec.landmarks),
            "flip_pairs": [list(p) for p in spec.flip_pairs],
            "spacing_mode": "image",
        }
        index = 0
        for split, count in splits.items():
            rows = []
            for i in range(count):
                ph = make_phantom(kind, int(seeds[index]), missing_fraction=missing_fraction)
                rel = f"images/{split}_{i:03d}{suffix}"
                if image_format == "dicom":
                    write_dicom(tmp / rel, ph.image, ph.spacing, **_dicom_options(index))
                else:
                    write_nifti(tmp / rel, ph.image, ph.spacing)
                rows.append({
                    "image": rel,
                    "landmarks": [None if np.isnan(p).any() else [float(p[0]), float(p[1])] for p in ph.landmarks],
                    "spacing": [float(ph.spacing[0]), float(ph.spacing[1])],
                })
                index += 1
            datalist[split] = rows
        with atomic_write(tmp / "datalist.json") as f:
            f.write(_datalist_json(datalist))
        _publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "datalist.json"


def _datalist_json(datalist: dict) -> str:
    """JSON text with one line per top-level key and one line per datalist row."""
    items = []
    for key, value in datalist.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join("  " + json.dumps(row) for row in value)
            items.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            items.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(items) + "\n}\n"


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder onto ``out_dir`` (replacing it when ``overwrite``)."""
    if overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, trash / "old")
        os.rename(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, out_dir)  # succeeds onto a missing or empty directory
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(f"{out_dir}: was created by another process while generating") from e
        raise


def ensure_dataset(kind: str, out_dir: str | os.PathLike, **kwargs) -> Path:
    """Return ``out_dir/datalist.json``, generating the dataset first if it does not exist.

    Safe when several processes race: the first to finish publishes, the others use its result.
    ``kwargs`` go to :func:`generate_dataset`. An existing datalist of another kind raises
    :class:`~monai_ext.errors.LandmarkDataError`.
    """
    datalist = Path(out_dir) / "datalist.json"
    if not datalist.is_file():
        try:
            return generate_dataset(kind, out_dir, **kwargs)
        except FileExistsError:
            if not datalist.is_file():
                raise
    try:
        name = json.loads(datalist.read_text()).get("name")
    except (OSError, ValueError) as e:
        raise LandmarkDataError(f"{datalist}: unreadable datalist ({e})") from e
    if name != f"synthetic_{kind}":
        raise LandmarkDataError(f"{datalist}: holds dataset {name!r}, not synthetic_{kind}")
    return datalist
