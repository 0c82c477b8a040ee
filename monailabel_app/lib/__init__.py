"""Tasks of the MONAI Label app that serves the landmark bundles (``bundles/*``)."""
