"""The report's plots as base64 PNGs (`make_plots`): the Δnorm histogram, the ν^ε/ν^r scatters
the firing-frequency histogram and the tied crosscoder's slot-ratio scatter, all drawn by
`jaxcoders.analysis.plots`."""
from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np

from jaxcoders.analysis import plots


def _png(fn, *args, **kw) -> Optional[str]:
    buf = io.BytesIO()
    try:
        fn(*args, buf, **kw)
    except (KeyError, ValueError):
        return None
    return base64.b64encode(buf.getvalue()).decode()


def make_plots(t) -> list[tuple[str, str]]:
    """[(title, base64 png)] for the columns the table has."""
    out = []
    if "delta_norm" in t and "tag" in t:
        out.append(("Δnorm histogram", _png(plots.delta_norm_hist, t)))
    if "nu_error" in t and np.isfinite(t["nu_error"].to_numpy(float)).any():
        out.append(("ν^ε vs ν^r (chat-only latents)", _png(plots.nu_scatter, t)))
    if "mirror_nu_error" in t and np.isfinite(t["mirror_nu_error"].to_numpy(float)).any():
        out.append(("mirror ν^ε vs ν^r (base-only latents)", _png(plots.nu_scatter, t, mirror=True)))
    if "r_base" in t and "r_chat" in t:
        out.append(("slot ratios", _png(plots.slot_ratio_scatter, t)))
    if "frequency" in t and "tag" in t:
        out.append(("firing frequency", _png(plots.frequency_hist, t)))
    return [(k, v) for k, v in out if v]
