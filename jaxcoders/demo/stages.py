"""The demo's console: `Stages`, the numbered stage log with per-stage timings
(`[i/n] what` ... `done in N s`), and `quiet_libraries`, which silences the libraries' own logs
and progress bars (absl, orbax, transformers, datasets)."""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable


class Stages:
    """Numbers the stages as they start and records each one's seconds in `seconds` ({name: s});
    `t0` is the time the first one was created (the run's start)."""

    def __init__(self, n: int, log: Callable):
        self.n, self.i, self.log, self.t0, self.t = n, 0, log, time.time(), time.time()
        self.seconds: dict = {}

    def start(self, name: str, what: str) -> None:
        self.i += 1
        self.name, self.t = name, time.time()
        self.log(f"[{self.i}/{self.n}] {what}")

    def done(self) -> float:
        dt = time.time() - self.t
        self.seconds[self.name] = round(dt, 1)
        self.log(f"      done in {dt:.0f} s (total {time.time() - self.t0:.0f} s)")
        return dt


def quiet_libraries() -> None:
    """Errors only from the libraries the demo drives; no progress bars of their own."""
    warnings.filterwarnings("ignore", module="transformers")
    for name in ("absl", "jax._src.xla_bridge", "orbax", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing: the model stage will say so
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:
        pass
