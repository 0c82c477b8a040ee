"""Command-line helpers around the bundles, e.g. the ``--config_file`` value of a bundle's workflow::

    python -m monai.bundle run evaluating --config_file "$(python -m monai_ext config_files bundles/kneel evaluate)"
    python -m monai_ext config_files bundles/scn train --variants "['quick.json']"
"""

from __future__ import annotations

from collections.abc import Sequence

import fire

from monai_ext import bundle as _bundle


def config_files(
    bundle: str, workflow: str = "train", variants: Sequence[str] = (), stage: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The ``--config_file`` value (a Python list literal, as ``python -m monai.bundle`` takes it) of ``bundle``'s
    ``workflow`` ("train", "evaluate" or "inference"): :func:`monai_ext.bundle.config_files` with the paths as given
    (relative to the repository root when ``bundle`` is)."""
    variants, extra = ([v] if isinstance(v, str) else list(v) for v in (variants, extra))
    files = _bundle.config_files(bundle, workflow, variants=variants, stage=stage, extra=extra)
    return "[" + ",".join(repr(f) for f in files) + "]"


if __name__ == "__main__":
    fire.Fire({"config_files": config_files})
