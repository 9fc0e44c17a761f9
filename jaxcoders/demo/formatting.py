"""How the demo's prose and tables print numbers: `fmt` (a float by format spec, "–" when missing
or not finite) and `pct` (a fraction as a percentage with one decimal)."""
from __future__ import annotations

import numpy as np


def fmt(v, spec=".2f") -> str:
    """`v` formatted with `spec`; "–" when it is not a finite number."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else format(v, spec)


def pct(v) -> str:
    """The fraction `v` as "12.3%"; "–" when it is None or not finite."""
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"
