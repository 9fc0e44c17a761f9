"""The progress display of the examples passes (in tokens, or examples for the window fill): a bar
on a terminal, periodic lines otherwise (`jaxcoders.progress`), nothing when `progress` is off."""
from __future__ import annotations

from jaxcoders.progress import progress_bar as _bar


def progress_bar(progress: bool, total, desc):
    """A progress display of `total` units, or None when `progress` is off."""
    if not progress:
        return None
    return _bar(total, desc, "tok", unit_scale=True)
