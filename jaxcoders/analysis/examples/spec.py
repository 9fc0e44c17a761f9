"""Static parameters of the examples pass: format constants, the `Spec` (a jit static argument), the
bucket table, the memory estimates checked before the pass and the initial pass state.

The pass state (host numpy here, latent-sharded on device), with L = 1 + reservoirs groups (group 0:
top; group 1 + r: reservoir r, ascending ranges), K = per_bucket, S selected latents, C code channels:
score, value, row (L, K, S) int32 / float32 / int32 (score sorted descending per group; INT_MIN = empty),
population (L, S) uint32, count_code (C, S), count_active (S,), count_class (classes, S) uint32 and
observed_max (S,) float32."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FORMAT = "jaxcoders.max_activating_examples"
FORMAT_VERSION = 1
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.95, 1.0)  # reference thresholds, × max_act
INT_MIN = np.iinfo(np.int32).min
# A supplied max counts as exceeded only beyond this relative margin: the same quantity computed by
# another pass (e.g. analyze's max_activation) may differ by float32 rounding.
ABOVE_MARGIN = 1e-5
ROW_COLUMNS = ("token_ids", "sequence_ids", "positions", "dataset_ids", "token_classes")


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static shape parameters of the pass (hashable: a jit static argument)."""

    per_bucket: int
    num_reservoirs: int
    before: int
    after: int
    max_sequences: int
    num_classes: int

    @property
    def window(self) -> int:
        return self.before + 1 + self.after


def bucket_table(fractions: Sequence[float], above: bool) -> list[dict]:
    """Bucket descriptors in file order: top, then reservoirs from the highest range down."""
    edges = [0.0] + [float(f) for f in fractions]
    res = [{"kind": "reservoir", "lo": edges[i], "hi": edges[i + 1]} for i in range(len(fractions))]
    if above:
        res.append({"kind": "reservoir", "lo": edges[-1], "hi": None})
    out = [{"id": 0, "name": "top", "kind": "top", "lo": None, "hi": None}]
    for i, b in enumerate(reversed(res)):
        name = f"{b['lo']:g}-{'inf' if b['hi'] is None else format(b['hi'], 'g')}"
        out.append({"id": i + 1, "name": name, **b})
    return out


def state_bytes(num_latents: int, spec: Spec) -> int:
    """Device bytes of the pass state (all shards together): score, value and row per kept entry."""
    return (1 + spec.num_reservoirs) * spec.per_bucket * num_latents * 12


def output_bytes(num_latents: int, spec: Spec, num_channels: int) -> int:
    """Host bytes of the finished examples at most (windows: token ids + float32 channels)."""
    return (1 + spec.num_reservoirs) * spec.per_bucket * num_latents * (40 + 4 * (1 + num_channels) * spec.window)


def init_state(spec: Spec, S: int, C: int) -> dict:
    """The empty pass state of S latents and C code channels (shapes in the module docstring)."""
    L, K = 1 + spec.num_reservoirs, spec.per_bucket
    return {  # group 0: top; group 1 + r: reservoir r (ascending ranges)
        "score": np.full((L, K, S), INT_MIN, np.int32), "value": np.zeros((L, K, S), np.float32),
        "row": np.full((L, K, S), -1, np.int32),
        "population": np.zeros((L, S), np.uint32), "count_code": np.zeros((C, S), np.uint32),
        "count_active": np.zeros((S,), np.uint32), "count_class": np.zeros((max(spec.num_classes, 1), S), np.uint32),
        "observed_max": np.zeros((S,), np.float32),
    }
