"""Cobb angles from vertebral corner landmarks, following the AASCE 2019 challenge protocol, and their SMAPE.

Landmarks: 4 corners per vertebra, top to bottom (T1..L5 for the 17-vertebra AASCE layout), each vertebra
``TL, TR, BL, BR`` (top-left, top-right, bottom-left, bottom-right in image coordinates; ``(x, y)`` pixels of the
original image, ``y`` down). The protocol (``../shared/data/README.md``; the challenge's reference code):

* a vertebra's direction runs from the midpoint of its left corners ``(TL + BL) / 2`` to the midpoint of its right
  corners ``(TR + BR) / 2``; the angle between two vertebrae is ``arccos`` of the cosine of their directions clipped
  to ``[0, 1]`` (so 0..90 deg);
* ``main`` is the largest angle between any two vertebrae; its end vertebrae are ``a`` (upper: the first row of the
  angle matrix reaching the maximum) and ``b`` (the first column of row ``a`` reaching it);
* the endplate midpoints (``(TL + TR) / 2`` and ``(BL + BR) / 2``, top to bottom) decide the shape: with ``m_0`` the
  first and ``m_N`` the last, ``l_i = (y_i - y_N) / (y_0 - y_N) - (x_i - x_N) / (x_0 - x_N)`` for the first ``N - 1``
  midpoints ``i = 0..N-2`` (the reference code leaves the last two out); the curve is S-shaped unless all ``l_i`` have
  the same sign, i.e. ``(sum |l|)^2 - (sum l)^2 < 1e-4``;
* not S-shaped: ``upper`` = angle(first vertebra, ``a``), ``lower`` = angle(last vertebra, ``b``);
* S-shaped and the two end vertebrae in the upper part of the image (the sum of the rows of their endplate midpoints
  ``< image height``; which endplate: ``endplate``): ``upper`` = the largest angle between ``a`` and any vertebra
  above it (itself included), ``lower`` = the largest angle between ``b`` and any vertebra below it;
* otherwise: ``upper`` as before (reached at vertebra ``c``), ``lower`` = the largest angle between ``c`` and any
  vertebra above it.

``endplate="top"`` (default) is the README's rule (the top endplates of ``a`` and ``b``); ``"bottom"`` uses their
bottom endplates, which is what a 1-based reading of the reference code's ``mid_p_v(pos*2)`` means. On the 481 shared
AASCE images the two reproduce all three given angles within 0.01 deg for 95.4 % and 97.7 % of the images (see
``tests/test_cobb.py``; with ``"bottom"`` every S-shaped image whose given angles match a branch gets that branch);
they differ only for S-shaped curves whose end vertebrae lie near the middle of the image.

Missing landmarks: a vertebra with any missing (``NaN``) corner (or a degenerate one, whose left and right midpoints
coincide) is skipped: the protocol runs on the remaining
vertebrae (the first/last vertebra are then the first/last complete one). With fewer than two complete vertebrae the
angles are ``NaN``: never a silent zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CobbAngles", "cobb_angles", "cobb_interval", "smape", "vertebra_angle_matrix", "is_s_shaped"]

ENDPLATES = ("top", "bottom")


@dataclass
class CobbAngles:
    """Cobb angles in degrees (``NaN`` when not computable) and how they were obtained.

    ``upper_end``/``lower_end``: indices (in the full vertebra list) of the end vertebrae ``a`` and ``b`` of the main
    curve; ``vertebrae``: the complete vertebrae used; ``s_shaped``: the shape decision (``None`` when not computed).
    """

    main: float = float("nan")
    upper: float = float("nan")
    lower: float = float("nan")
    upper_end: int = -1
    lower_end: int = -1
    s_shaped: bool | None = None
    vertebrae: list[int] = field(default_factory=list)

    def as_array(self) -> np.ndarray:
        """``(3,)`` float64 ``[main, upper, lower]``."""
        return np.array([self.main, self.upper, self.lower], dtype=np.float64)


def vertebra_angle_matrix(corners: np.ndarray) -> np.ndarray:
    """Angles (deg) between the directions of ``V`` vertebrae, ``(V, V)``; ``corners`` ``(V, 4, 2)`` TL, TR, BL, BR."""
    left = (corners[:, 0] + corners[:, 2]) / 2
    right = (corners[:, 1] + corners[:, 3]) / 2
    vec = right - left
    norm = np.linalg.norm(vec, axis=1)
    if not (norm > 0).all():
        raise ValueError("vertebra_angle_matrix: a vertebra has no direction (its left and right midpoints coincide)")
    cos = (vec @ vec.T) / np.outer(norm, norm)
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def is_s_shaped(midpoints: np.ndarray, tol: float = 1e-4) -> bool:
    """The challenge's S-shape test on endplate midpoints ``(N, 2)`` (see the module docstring).

    A chord with ``x_0 == x_N`` (perfectly vertical) has no normalised form; the sign of the cross product with the
    chord, which is what ``l_i`` measures, is used instead.
    """
    m = np.asarray(midpoints, dtype=np.float64)
    n = len(m)
    if n < 3:
        return False
    x0, y0 = m[0]
    xn, yn = m[-1]
    pts = m[: n - 2]
    if x0 != xn and y0 != yn:
        ll = (pts[:, 1] - yn) / (y0 - yn) - (pts[:, 0] - xn) / (x0 - xn)
    else:
        ll = (pts[:, 1] - yn) * (x0 - xn) - (pts[:, 0] - xn) * (y0 - yn)
        scale = max(abs(x0 - xn), abs(y0 - yn), 1e-12) ** 2
        ll = ll / scale
    return bool(abs(np.abs(ll).sum() ** 2 - ll.sum() ** 2) >= tol)


def cobb_angles(
    landmarks: np.ndarray | Sequence, image_height: float, corners_per_vertebra: int = 4, endplate: str = "top"
) -> CobbAngles:
    """Main, upper and lower Cobb angles (deg) of a spine from its vertebral corners (module docstring).

    Args:
        landmarks: ``(4V, 2)`` points ``(x, y)`` in original image pixels, ``NaN`` where missing.
        image_height: rows of the original image (the S-curve rule compares endplate rows with it).
        corners_per_vertebra: must be 4 (TL, TR, BL, BR).
        endplate: ``"top"`` (README) or ``"bottom"`` (MATLAB reference) endplates in the S-curve position rule.
    """
    if corners_per_vertebra != 4:
        raise ValueError(f"cobb_angles: needs 4 corners per vertebra (TL, TR, BL, BR), got {corners_per_vertebra}")
    if endplate not in ENDPLATES:
        raise ValueError(f"cobb_angles: endplate must be one of {ENDPLATES}, got {endplate!r}")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] % 4:
        raise ValueError(f"cobb_angles: landmarks must be (4V, 2), got shape {pts.shape}")
    corners = pts.reshape(-1, 4, 2)
    finite = np.isfinite(corners).all(axis=(1, 2))
    width = np.full(len(corners), np.nan)
    width[finite] = np.linalg.norm((corners[finite, 1] + corners[finite, 3] - corners[finite, 0] - corners[finite, 2]) / 2, axis=1)
    complete = np.flatnonzero(finite & (np.nan_to_num(width) > 0))
    result = CobbAngles(vertebrae=[int(v) for v in complete])
    if len(complete) < 2:
        return result
    c = corners[complete]
    ang = vertebra_angle_matrix(c)
    last = len(c) - 1
    pos1 = np.argmax(ang, axis=1)
    row_max = ang.max(axis=1)
    a = int(np.argmax(row_max))
    b = int(pos1[a])
    midpoints = np.stack([(c[:, 0] + c[:, 1]) / 2, (c[:, 2] + c[:, 3]) / 2], axis=1).reshape(-1, 2)  # (2V', 2)
    s_shaped = is_s_shaped(midpoints)
    main = float(row_max[a])
    if not s_shaped:
        upper, lower = float(ang[0, a]), float(ang[last, b])
    else:
        e = 0 if endplate == "top" else 1
        above_a = ang[a, : a + 1]
        upper = float(above_a.max())
        if midpoints[2 * a + e, 1] + midpoints[2 * b + e, 1] < float(image_height):
            lower = float(ang[b, b:].max())
        else:
            c_idx = int(np.argmax(above_a))
            lower = float(ang[c_idx, : c_idx + 1].max())
    result.main, result.upper, result.lower = main, upper, lower
    result.upper_end, result.lower_end = int(complete[a]), int(complete[b])
    result.s_shaped = s_shaped
    return result


def cobb_interval(
    landmarks: np.ndarray | Sequence,
    radii: np.ndarray | Sequence,
    image_height: float,
    coverage: float = 0.9,
    num_samples: int = 200,
    seed: int = 0,
    corners_per_vertebra: int = 4,
    endplate: str = "top",
) -> tuple[np.ndarray, np.ndarray]:
    """Intervals ``(low (3,), high (3,))`` of the ``[main, upper, lower]`` Cobb angles (deg) from the corners'
    conformal regions, by sampling.

    Each corner is drawn from an isotropic Gaussian around its prediction whose radial ``coverage`` quantile is its
    region radius (``sigma = r / sqrt(-2 ln(1 - coverage))``, the Rayleigh quantile), independently of the others; the
    angles of ``num_samples`` such spines give the central ``coverage`` interval of each angle. The corners' errors
    are in fact correlated (neighbouring corners move together), so the interval's coverage is an empirical
    question (measured in the docs), not a guarantee. ``radii``: ``(4V,)`` in the landmarks' pixels (``NaN``: no
    region, the corner is kept fixed); ``NaN`` bounds where an angle is not computable.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    r = np.nan_to_num(np.asarray(radii, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0)
    if r.shape[0] != pts.shape[0]:
        raise ValueError(f"cobb_interval: {r.shape[0]} radii for {pts.shape[0]} landmarks")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"cobb_interval: coverage must be in (0, 1), got {coverage}")
    sigma = r / np.sqrt(-2.0 * np.log(1.0 - coverage))
    rng = np.random.default_rng(seed)
    samples = pts[None] + rng.normal(size=(int(num_samples), *pts.shape)) * sigma[None, :, None]
    angles = np.stack([cobb_angles(s, image_height, corners_per_vertebra, endplate).as_array() for s in samples])
    tail = 100.0 * (1.0 - coverage) / 2.0
    with np.errstate(invalid="ignore"):
        low, high = np.nanpercentile(angles, tail, axis=0), np.nanpercentile(angles, 100.0 - tail, axis=0)
    return low, high


def smape(pred: np.ndarray | Sequence, gt: np.ndarray | Sequence) -> float:
    """Symmetric mean absolute percentage error of Cobb angles, AASCE style, in percent:
    ``100 * sum |pred - gt| / sum (pred + gt)`` over all images and angles.

    ``pred``, ``gt``: ``(N, 3)`` (or any equal shapes) in degrees; an image with a ``NaN`` angle in either is left
    out entirely. ``NaN`` when nothing is left or the denominator is 0.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"smape: pred and gt shapes differ: {p.shape} vs {g.shape}")
    if p.ndim == 1:
        p, g = p[None], g[None]
    ok = np.isfinite(p).all(axis=tuple(range(1, p.ndim))) & np.isfinite(g).all(axis=tuple(range(1, g.ndim)))
    if not ok.any():
        return float("nan")
    den = float((p[ok] + g[ok]).sum())
    return float(100.0 * np.abs(p[ok] - g[ok]).sum() / den) if den > 0 else float("nan")
