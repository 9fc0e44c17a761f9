"""TensorBoard event files of the training metrics (optional; `RunConfig.tensorboard=True`).

The trainer writes every metrics row (the same rows as `metrics.jsonl`) as scalars to
`<workdir>/tensorboard/` from process 0:

    tensorboard --logdir <workdir>/tensorboard        # or a parent holding several runs

Tags: training rows under `train/<metric>` (loss, recon, l0, auxk, num_dead, threshold, tokens_per_s,
...), validation rows keep their `val/...` keys; list-valued metrics (one θ per model for
DECOUPLED) become `<tag>/<i>`. On resumption the writer purges events at and after the resumed
step (TensorBoard's purge_step), so a restarted run shows one curve. Needs `tensorboardX`
(`pip install 'jaxcoders[tensorboard]'`); `gs://` log dirs also need `google-cloud-storage`.
"""
from __future__ import annotations

import math
from typing import Optional


class TensorBoardLog:
    """`write(row)` for metrics rows with an int `step`; a no-op when not enabled."""

    def __init__(self, logdir, start_step: int = 0, enabled: bool = True, flush_secs: int = 30):
        self.writer = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ImportError("run.tensorboard=True needs the tensorboardX package: "
                              "pip install 'jaxcoders[tensorboard]' (or pip install tensorboardX)") from e
        # the suffix keeps a resumed run's file apart from the one it continues even within the same
        # second (event file names are <time in s>.<host><suffix>)
        self.writer = SummaryWriter(logdir=str(logdir), purge_step=start_step if start_step > 0 else None,
                                    flush_secs=flush_secs, filename_suffix=f".from{start_step}")

    @staticmethod
    def scalars(row: dict) -> list[tuple[str, float]]:
        """[(tag, value)] of a metrics row: finite numbers only, lists expanded."""
        out = []
        for key, v in row.items():
            if key == "step":
                continue
            tag = key if "/" in key else f"train/{key}"
            vals = [(tag, v)] if not isinstance(v, (list, tuple)) else [(f"{tag}/{i}", x) for i, x in enumerate(v)]
            for t, x in vals:
                if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
                    out.append((t, float(x)))
        return out

    def write(self, row: dict) -> None:
        if self.writer is None:
            return
        step: Optional[int] = row.get("step")
        for tag, value in self.scalars(row):
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
