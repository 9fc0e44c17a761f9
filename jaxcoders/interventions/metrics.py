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
* Aggregation: the per-token mean pooled over all scored positions of all conversations
  (Σ values / Σ count); the 95% interval is a percentile bootstrap over conversations (resample
  conversations with replacement, recompute the pooled mean), so tokens of one conversation are
  not treated as independent. `std_err` is the bootstrap standard deviation.
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
    """Per conversation and edit: sums and counts of each metric on each position subset."""

    def __init__(self):
        self.sums: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.counts: dict[str, list[int]] = {s: [] for s in SUBSETS}
        self.num_conversations = 0

    def add_conversation(self, n_all: int, n_first: int) -> int:
        self.counts["all"].append(n_all)
        self.counts["first_k"].append(n_first)
        self.num_conversations += 1
        return self.num_conversations - 1

    def add(self, edit: str, conv: int, values: dict, first_mask: np.ndarray) -> None:
        """Metrics (P,) of conversation `conv` (its scored positions, in order) for one edit."""
        per = self.sums.setdefault(edit, {s: {m: [] for m in METRICS} for s in SUBSETS})
        for m in METRICS:
            v = np.asarray(values[m], np.float64)
            for s, sel in (("all", slice(None)), ("first_k", np.asarray(first_mask, bool))):
                lst = per[s][m]
                if len(lst) != conv:
                    raise RuntimeError(f"edit {edit!r}: conversation {conv} added out of order")
                lst.append(float(v[sel].sum()))

    def arrays(self, edit: str, subset: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.sums[edit][subset][metric], np.float64), np.asarray(self.counts[subset], np.float64)


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


def paired_difference(acc: Accumulator, edit_a: str, edit_b: str, *, subset: str = "all", metric: str = "kl_chat",
                      n_boot: int = 1000, seed: int = 0) -> dict:
    """mean(a) − mean(b) on the same tokens, bootstrapped over conversations (paired: same resamples)."""
    sa, c = acc.arrays(edit_a, subset, metric)
    sb, _ = acc.arrays(edit_b, subset, metric)
    return bootstrap_mean(sa - sb, c, n_boot=n_boot, seed=seed)
