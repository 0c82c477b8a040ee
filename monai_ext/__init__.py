"""Shared package of the landmark bundles: data, transforms, networks, decoding, metrics, engines.

Coordinate convention (used by every module, stated once here):

* Images follow MONAI's reader convention: a 2D image is a channel-first array ``(C, W, H)``,
  spatial dim 0 is x (column), spatial dim 1 is y (row).
* A landmark is a point ``(x, y)`` in the same index order, with pixel *centres* at integer
  coordinates (the centre of the top-left pixel is ``(0, 0)``), so ``image[:, round(x), round(y)]``
  is the pixel under the landmark. Landmark arrays are ``(K, 2)`` or batched ``(B, K, 2)``.
* Physical space: the MetaTensor affine maps ``(x, y, 1)`` to millimetres; for radiographs the
  pixel spacing is ``(sx, sy)`` mm per pixel along x and y.
* A missing landmark (occluded, prosthesis, outside the field of view) is ``NaN`` in both
  coordinates: it produces no heatmap, no loss and is excluded (and counted) by the metrics.
"""

__version__ = "0.1.0"
