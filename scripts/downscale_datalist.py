"""Write a downscaled copy of a datalist's 2D images with landmarks and spacing moved to match.

For carrying a dataset where size matters (a GPU machine that takes 64 MiB, a laptop) without losing
the physical scale: errors measured on the copy are still in the original units.

    python scripts/downscale_datalist.py --datalist data/hand_xray/datalist.json --out .devdata/hand_xray \\
        --max_size 1024 --keep validation

Coordinates follow the project's convention (pixel centres, x = column, y = row): an image resized by
``s_x = new_width / old_width`` (and ``s_y``) moves a landmark ``x`` to ``(x + 0.5) * s_x - 0.5``, and
its spacing becomes ``spacing / s``. A datalist in pixels (``spacing_mode: pixel``) gets per-entry
``spacing`` ``[1 / s_x, 1 / s_y]`` in original pixels per new pixel, so errors stay in original pixels.
Images in ``--keep`` sections are copied unchanged. Images are written as 8-bit grayscale JPEG (or PNG
with ``--format png``); DICOM/NIfTI inputs are read with the project's reader.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from monai_ext.data.datalist import read_datalist, write_datalist

SECTIONS = ("training", "validation", "test")


def _scaled_points(points: Any, scale: tuple[float, float]) -> Any:
    """Landmarks ``[[x, y] | null, ...]`` moved to the resized image's pixel centres."""
    if points is None:
        return None
    out = []
    for p in points:
        if p is None or any(v is None or not math.isfinite(float(v)) for v in p):
            out.append(p)
        else:
            out.append([(float(p[0]) + 0.5) * scale[0] - 0.5, (float(p[1]) + 0.5) * scale[1] - 0.5])
    return out


def _read_gray(path: Path) -> tuple[Image.Image, tuple[float, float] | None]:
    """An 8-bit grayscale PIL image of ``path`` and its file spacing (mm/pixel along x, y) if it has one."""
    if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"):
        return Image.open(path).convert("L"), None
    from monai_ext.data.readers import LoadRadiograph

    image = LoadRadiograph()(str(path))
    array = np.asarray(image)[0]  # (W, H): x first
    lo, hi = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    spacing = image.meta.get("spacing")
    if spacing is None or image.meta.get("spacing_source") == "none":
        return Image.fromarray(scaled.T.astype(np.uint8)), None
    file_spacing = (float(spacing[0]), float(spacing[1]))
    return Image.fromarray(scaled.T.astype(np.uint8)), file_spacing


def downscale(
    datalist: str,
    out: str,
    max_size: int = 1024,
    keep: Sequence[str] | str = (),
    format: str = "jpeg",
    quality: int = 95,
) -> str:
    """Write the copy to folder ``out`` (``out/datalist.json`` + ``out/images``); returns the datalist path.

    Args:
        datalist: the source datalist JSON.
        out: the new folder (must not exist yet: nothing is overwritten or left half-written).
        max_size: longest side of a written image in pixels (smaller images are not enlarged).
        keep: sections whose images are copied unchanged (e.g. ``validation`` to time real files).
        format: ``jpeg`` or ``png``.
        quality: JPEG quality.
    """
    keep = [keep] if isinstance(keep, str) else list(keep)
    keep = [s for k in keep for s in str(k).split(",") if s]
    if format not in ("jpeg", "png"):
        raise ValueError(f"--format must be 'jpeg' or 'png', got {format!r}")
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"{target}: already exists; choose a new folder")
    doc = read_datalist(datalist)
    base = Path(datalist).resolve().parent
    pixel = doc.get("spacing_mode") == "pixel"
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (work / "images").mkdir()
        new_doc = {k: v for k, v in doc.items() if k not in SECTIONS}
        new_doc["description"] = (f"{doc.get('description', '')} Downscaled copy (longest side <= {max_size} px"
                                  f"{'; ' + ', '.join(keep) + ' unchanged' if keep else ''}) of {datalist}.")
        if pixel:
            new_doc["description"] += " Per-entry 'spacing' is in original pixels per pixel: errors in original pixels."
        names: set[str] = set()
        for section in SECTIONS:
            if doc.get(section) is None:
                continue
            entries = []
            for entry in doc[section]:
                src = Path(entry["image"]) if Path(entry["image"]).is_absolute() else (base / entry["image"]).resolve()
                stem = src.stem if src.suffix.lower() != ".gz" else Path(src.stem).stem
                name = stem
                while name in names:
                    name += "_"
                names.add(name)
                new = dict(entry)
                if section in keep:
                    dst = work / "images" / (name + src.suffix)
                    shutil.copyfile(src, dst)
                    new["image"] = f"images/{dst.name}"
                    entries.append(new)
                    continue
                try:
                    image, file_spacing = _read_gray(src)
                except Exception as err:  # name the file, then stop: a partial copy is removed below
                    raise RuntimeError(f"{src}: cannot be read ({err})") from err
                width, height = image.size
                factor = min(1.0, max_size / max(width, height))
                size = (max(1, round(width * factor)), max(1, round(height * factor)))
                scale = (size[0] / width, size[1] / height)
                if size != (width, height):
                    image = image.resize(size, Image.Resampling.LANCZOS)
                dst = work / "images" / (name + (".jpg" if format == "jpeg" else ".png"))
                image.save(dst, **({"quality": int(quality)} if format == "jpeg" else {}))
                new["image"] = f"images/{dst.name}"
                new["landmarks"] = _scaled_points(entry.get("landmarks"), scale)
                spacing = entry.get("spacing") or file_spacing or ([1.0, 1.0] if pixel else None)
                if spacing is not None:
                    new["spacing"] = [float(spacing[0]) / scale[0], float(spacing[1]) / scale[1]]
                entries.append(new)
            new_doc[section] = entries
        write_datalist(work / "datalist.json", new_doc)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return str(target / "datalist.json")


if __name__ == "__main__":
    import fire

    fire.Fire(downscale)
