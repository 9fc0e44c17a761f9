"""Which positions are scored, the per-token metrics, and their aggregation with confidence intervals.

* **Assistant-predicting positions**: position t of a conversation is scored when token t+1 is an
  assistant token (`TokenClass.ASSISTANT`, from `jaxcoders.extract.text.encode_chats`): the logits
  at t predict an assistant token. Template tokens (turn markers, the end-of-turn token) are not
  assistant tokens and are not scored.
* **First k of each turn**: an assistant turn is a maximal run of consecutive assistant tokens;
  its first k tokens are predicted at positions run_start − 1 ... run_start + k − 2.
* Per scored position (float32, from log-softmax): `ce` = −log P_edited(true next token);
  `kl_chat` = KL(P_chat ‖ P_edited) = Σ_v P_chat(v) (log P_chat(v) − log P_edited(v));
  `kl_base` = KL(P_base ‖ P_edited). P_chat / P_base are the unedited chat / base models.
* **Position in the turn** (`turn_positions`): a scored position predicts token t+1, the i-th
  token (i = 0, 1, ...) of its assistant turn; i is its position. The per-position means (the
  paper's KL-by-token-position curve) pool, for each i < `positions`, the scored positions with that
  index over all turns of all conversations.
* Aggregation: the per-token mean pooled over all scored positions of all conversations
  (Σ values / Σ count); the 95% interval is a percentile bootstrap over conversations (resample
  conversations with replacement, recompute the pooled mean), so tokens of one conversation are
  not treated as independent. `std_err` is the bootstrap standard deviation. The per-position
  means are bootstrapped the same way, each position on its own.
"""
from __future__ import annotations

import numpy as np

from jaxcoders.data.store import TokenClass

METRICS = ("ce", "kl_chat", "kl_base")
SUBSETS = ("all", "first_k")


def assistant_masks(classes_T, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(predicts_assistant (T,), predicts_first_k (T,)) bool masks over positions of one sequence."""
    cls = np.asarray(classes_T)
    T = cls.shape[0]
    is_asst = cls == TokenClass.ASSISTANT
    pred = np.zeros(T, bool)
    pred[:-1] = is_asst[1:]
    first_target = np.zeros(T, bool)
    run = 0
    for t in range(T):
        run = run + 1 if is_asst[t] else 0
        first_target[t] = bool(is_asst[t]) and run <= k
    first = np.zeros(T, bool)
    first[:-1] = first_target[1:]
    return pred, first


def turn_positions(classes_T) -> np.ndarray:
    """(T,) int64: at a position whose next token is an assistant token, that token's index in its
    assistant turn (0 = the turn's first token); -1 elsewhere. `turn_positions(c) < k` on the
    scored positions is `assistant_masks(c, k)[1]`."""
    cls = np.asarray(classes_T)
    T = cls.shape[0]
    is_asst = cls == TokenClass.ASSISTANT
    index = np.full(T, -1, np.int64)
    run = -1
    for t in range(T):
        run = run + 1 if is_asst[t] else -1
        index[t] = run
    out = np.full(T, -1, np.int64)
    out[:-1] = index[1:]
    return out


def token_metrics(lp_edit_PV, lp_chat_PV, lp_base_PV, targets_P) -> dict:
    """Per-position metrics (torch float32 log-probabilities (P, V), targets (P,)) → numpy (P,) each."""
    import torch

    lp_edit = lp_edit_PV.float()
    out = {"ce": -lp_edit.gather(-1, targets_P[:, None].long())[:, 0]}
    for name, lp_ref in (("kl_chat", lp_chat_PV), ("kl_base", lp_base_PV)):
        lp_ref = lp_ref.float()
        out[name] = torch.sum(torch.exp(lp_ref) * (lp_ref - lp_edit), dim=-1)
    return {k: v.double().cpu().numpy() for k, v in out.items()}


def log_softmax(logits):
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


class Accumulator:
    """Per conversation and edit: sums and counts of each metric on each position subset and, with
    `positions` = Q > 0, on each of the first Q positions in the assistant turn."""

    def __init__(self, positions: int = 0):
        self.sums: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.counts: dict[str, list[int]] = {s: [] for s in SUBSETS}
        self.positions = int(positions)
        self.pos_sums: dict[str, dict[str, list[np.ndarray]]] = {}
        self.pos_counts: list[np.ndarray] = []  # per conversation (Q,)
        self.num_conversations = 0

    def add_conversation(self, n_all: int, n_first: int, turn_pos=None) -> int:
        """A new conversation: its scored-token counts (and the turn positions (P,) of its scored
        positions when per-position sums are kept); returns its index."""
        self.counts["all"].append(n_all)
        self.counts["first_k"].append(n_first)
        if self.positions:
            self.pos_counts.append(self._by_position(np.ones(len(turn_pos)), turn_pos))
        self.num_conversations += 1
        return self.num_conversations - 1

    def _by_position(self, v_P, turn_pos_P) -> np.ndarray:
        q = np.asarray(turn_pos_P, np.int64)
        keep = (q >= 0) & (q < self.positions)
        return np.bincount(q[keep], weights=np.asarray(v_P, np.float64)[keep], minlength=self.positions)

    def add(self, edit: str, conv: int, values: dict, first_mask: np.ndarray, turn_pos=None) -> None:
        """Metrics (P,) of conversation `conv` (its scored positions, in order) for one edit;
        `turn_pos` (P,): their positions in the assistant turn (needed when `positions` > 0)."""
        per = self.sums.setdefault(edit, {s: {m: [] for m in METRICS} for s in SUBSETS})
        pos = self.pos_sums.setdefault(edit, {m: [] for m in METRICS}) if self.positions else None
        for m in METRICS:
            v = np.asarray(values[m], np.float64)
            for s, sel in (("all", slice(None)), ("first_k", np.asarray(first_mask, bool))):
                lst = per[s][m]
                if len(lst) != conv:
                    raise RuntimeError(f"edit {edit!r}: conversation {conv} added out of order")
                lst.append(float(v[sel].sum()))
            if pos is not None:
                pos[m].append(self._by_position(v, turn_pos))

    def arrays(self, edit: str, subset: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.sums[edit][subset][metric], np.float64), np.asarray(self.counts[subset], np.float64)

    def position_arrays(self, edit: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(sums (C, Q), counts (C, Q)) per conversation and position in the turn."""
        C, Q = self.num_conversations, self.positions
        sums = np.asarray(self.pos_sums[edit][metric], np.float64).reshape(C, Q)
        return sums, np.asarray(self.pos_counts, np.float64).reshape(C, Q)


def bootstrap_mean(sums_C, counts_C, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Pooled per-token mean Σ sums / Σ counts with a conversation-level percentile bootstrap CI."""
    sums = np.asarray(sums_C, np.float64)
    counts = np.asarray(counts_C, np.float64)
    ok = counts > 0
    sums, counts = sums[ok], counts[ok]
    C, N = int(ok.sum()), int(counts.sum())
    if N == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "std_err": None, "tokens": 0, "conversations": 0}
    mean = float(sums.sum() / N)
    if C > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, C, size=(n_boot, C))
        boots = sums[idx].sum(1) / counts[idx].sum(1)
        a = (1.0 - level) / 2
        lo, hi = np.quantile(boots, [a, 1 - a])
        se = float(boots.std(ddof=1))
    else:
        lo = hi = mean
        se = 0.0
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi), "std_err": se, "tokens": N, "conversations": C}


def summarize(acc: Accumulator, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """{edit: {subset: {metric: bootstrap_mean(...)}}}."""
    return {edit: {s: {m: bootstrap_mean(*acc.arrays(edit, s, m), n_boot=n_boot, seed=seed) for m in METRICS}
                   for s in SUBSETS} for edit in acc.sums}


def summarize_positions(acc: Accumulator, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """{edit: {metric: [bootstrap_mean(...) + {"position": i} for i < Q]}} (the per-position means)."""
    out = {}
    for edit in acc.pos_sums:
        out[edit] = {}
        for m in METRICS:
            sums, counts = acc.position_arrays(edit, m)
            out[edit][m] = [{"position": q, **bootstrap_mean(sums[:, q], counts[:, q], n_boot=n_boot, seed=seed)}
                            for q in range(acc.positions)]
    return out


def paired_difference(acc: Accumulator, edit_a: str, edit_b: str, *, subset: str = "all", metric: str = "kl_chat",
                      n_boot: int = 1000, seed: int = 0) -> dict:
    """mean(a) − mean(b) on the same tokens, bootstrapped over conversations (paired: same resamples)."""
    sa, c = acc.arrays(edit_a, subset, metric)
    sb, _ = acc.arrays(edit_b, subset, metric)
    return bootstrap_mean(sa - sb, c, n_boot=n_boot, seed=seed)
