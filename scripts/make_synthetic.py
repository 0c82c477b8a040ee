"""Generate a synthetic landmark dataset (phantom radiographs with known geometry and spacing).

Example::

    python scripts/make_synthetic.py --kind spine --out_dir data/synthetic/spine
    python scripts/make_synthetic.py --kind hand --out_dir data/synthetic/hand --image_format nifti \\
        --missing_fraction 0.05

Kinds: limbs, knees, spine, hand (see ``monai_ext.data.synthetic``). Prints the datalist path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from monai_ext.data.synthetic import generate_dataset  # noqa: E402


def main(
    kind: str,
    out_dir: str,
    n_train: int = 24,
    n_val: int = 8,
    n_test: int = 8,
    seed: int = 0,
    image_format: str = "dicom",
    missing_fraction: float = 0.0,
    overwrite: bool = False,
) -> str:
    """Write ``out_dir/images/*`` and ``out_dir/datalist.json`` and return the datalist path.

    Args:
        kind: phantom kind: limbs, knees, spine or hand.
        out_dir: dataset folder; must be missing or empty unless ``overwrite``.
        n_train, n_val, n_test: number of images per split.
        seed: dataset seed (same seed, same dataset).
        image_format: "dicom" (.dcm, varied encodings) or "nifti" (.nii.gz).
        missing_fraction: probability that a landmark is marked missing (null).
        overwrite: replace an existing non-empty ``out_dir``.
    """
    path = generate_dataset(
        kind,
        out_dir,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=seed,
        image_format=image_format,
        missing_fraction=missing_fraction,
        overwrite=overwrite,
    )
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
