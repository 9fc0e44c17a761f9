"""Progress of long loops: a tqdm bar on a terminal, a plain line every `interval_s` seconds otherwise.

    bar = progress_bar(total=n, desc="extract", unit="tok")
    bar.update(k); bar.set_postfix(loss="0.12"); bar.close()

In a log file or under CI a carriage-return bar becomes one unreadable line; there the same calls
write `desc: 1,234/10,000 tok (12%) loss=0.12` lines through the "jaxcoders" logger instead (the
commands print that logger's messages on stderr; see jaxcoders.cli.common). `enabled=False` gives a
bar that does nothing.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional

log = logging.getLogger("jaxcoders.progress")


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (and not CI): where a live bar is readable."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class PlainProgress:
    """tqdm's small interface (update, set_postfix, set_description, close) as periodic log lines."""

    def __init__(self, total: Optional[float] = None, desc: str = "", unit: str = "it", initial: float = 0,
                 interval_s: float = 30.0, enabled: bool = True):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval_s, self.enabled = interval_s, enabled
        self.postfix = ""
        self._last = time.monotonic()
        self._t0 = self._last

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval_s:
            self._last = now
            self._emit()

    def set_postfix(self, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def _emit(self) -> None:
        done = f"{self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / max(time.monotonic() - self._t0, 1e-9)
        log.info("%s: %s %s%s, %s %s/s %s", self.desc or "progress", done, self.unit, pct, f"{rate:,.0f}",
                 self.unit, self.postfix)

    def close(self) -> None:
        if self.enabled and self.n:
            self._emit()
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total: Optional[float] = None, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 initial: float = 0, interval_s: float = 30.0, **tqdm_kw):
    """A tqdm bar when `enabled` and on a terminal, else `PlainProgress` (lines only when enabled)."""
    if enabled and on_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_kw)
    return PlainProgress(total=total, desc=desc, unit=unit, initial=initial, interval_s=interval_s, enabled=enabled)
