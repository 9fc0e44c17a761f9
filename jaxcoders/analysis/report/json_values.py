"""Numbers for the report's JSON: `json_number` rounds to a few significant digits and turns
NaN / inf into null, numpy scalars into Python ones."""
from __future__ import annotations

import math

import numpy as np


def json_number(v, digits: int = 4):
    """v rounded to `digits` significant digits (bool / int kept, non-finite -> None, text -> str)."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return None
    return float(f"{f:.{digits}g}")
