"""Metrics sinks beside metrics.jsonl: TensorBoard event files and Weights & Biases.

TensorBoard event files of the training metrics (optional; `RunConfig.tensorboard=True`).

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
import uuid
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


class WandbLog:
    """Weights & Biases: the same rows as metrics.jsonl, logged by step, and the run's resolved
    config once; a no-op unless `project` is set (nothing is sent when it is not asked for).

    The wandb library's own variables apply: `WANDB_MODE=offline` writes the run under
    `WANDB_DIR` (default: the working directory) for a later `wandb sync`; `WANDB_API_KEY` or a
    `wandb login` authenticates online runs. A resumed run continues the same W&B run: its id is
    kept in `<workdir>/wandb_run_id`."""

    def __init__(self, workdir, *, project: str, entity: str = "", name: str = "", tags: str = "",
                 config: Optional[dict] = None, enabled: bool = True):
        self.run = None
        if not (enabled and project):
            return
        try:
            import wandb
        except ImportError as e:
            raise ImportError("run.wandb_project needs the wandb package: pip install 'jaxcoders[wandb]' "
                              "(or pip install wandb)") from e
        id_file = workdir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        self.run = wandb.init(project=project, entity=entity or None, name=name or None, id=run_id, resume="allow",
                              tags=[t.strip() for t in tags.split(",") if t.strip()] or None, config=config or {},
                              dir=None)
        if not id_file.exists():
            id_file.write_text(run_id)

    def write(self, row: dict) -> None:
        if self.run is None:
            return
        values = dict(TensorBoardLog.scalars(row))
        if values:
            self.run.log(values, step=int(row["step"]) if row.get("step") is not None else None)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
