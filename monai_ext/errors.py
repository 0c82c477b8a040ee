"""Errors raised on bad input: every message names the file (and row) and what is wrong."""

from __future__ import annotations

from collections.abc import Sequence


class LandmarkDataError(ValueError):
    """Bad input data: an unreadable image, a malformed datalist row, a missing spacing, ...

    The message always starts with the offending file (and row, when there is one).
    """


class DatalistValidationError(LandmarkDataError):
    """A datalist or CSV with one or more bad rows; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source}: {len(self.problems)} problem(s):\n{lines}")
