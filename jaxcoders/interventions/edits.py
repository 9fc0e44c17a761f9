"""The residual edits of the causal evaluation (docs/method.md §6), in torch.

Notation: h_b, h_c = the base / chat residual after block L (HF `hidden_states[L+1]`) on the same
token ids; f = crosscoder code of (h_b, h_c); x̂_m(f) = f W_dec[m] + b_dec[m] (raw residual space);
d_j^m = W_dec[m, j]; "→ chat" = the edited residual replaces the chat model's residual after
block L and the chat model's blocks L+1.., final norm and LM head continue (reference
`continue_with="chat"`); "→ base" likewise with the base model.

| edit | residual after block L | continues |
|---|---|---|
| `base` | h_b (the unedited base model) | base |
| `chat` | h_c (the unedited chat model) | chat |
| `identity` | h_b, written back through the splice (sanity check: must equal `base`) | base |
| `base_to_chat` | h_b (reference `vanilla_base2chat`) | chat |
| `chat_to_base` | h_c (reference `vanilla_chat2base`) | base |
| `template` | h_c at template/control tokens, h_b elsewhere (reference `patch_base-ctrl_cchat`) | chat |
| `template_to_base` | the same residual (reference `patch_base-ctrl_cbase`) | base |
| `chat_recon` | x̂_c(f) (reference `chat_reconstruct`) | chat |
| `all_latents` | h_b + Σ_j (f_j d_j^c − f_j d_j^b) + (b_dec^c − b_dec^b) = h_b + x̂_c(f) − x̂_b(f) | chat |
| `all_latents_no_bias` | h_b + Σ_j f_j (d_j^c − d_j^b) (the reference's `steer_all`: no bias difference) | chat |
| `bias_only` | h_b + (b_dec^c − b_dec^b) (the S = ∅ baseline of `latents:*`) | chat |
| `latents:<set>` | h_b + Σ_{j∈S} (f_j d_j^c − f_j d_j^b) + (b_dec^c − b_dec^b) | chat |
| `steer` | h_src + α Σ_{j∈S} d_j^c (h_src = h_b or h_c, `steer_source`) | `steer_continue` |

`all_latents` = x̂_c(f) + (h_b − x̂_b(f)): the chat reconstruction plus the *base* error. With a
perfect reconstruction (x̂_m = h_m) it is exactly h_c, so the chat model's logits come back (the
test of this package); without the bias difference it is h_c − (b_dec^c − b_dec^b), which the
reference evaluated (docs/method.md §6: "include the decoder-bias difference — the reference forgets
it"). DECOUPLED BatchTopK codes use each model's own f_j^m in x̂_m.

Edits apply at every real token position p ≥ `skip_first` (the reference edits all positions);
positions before `skip_first` (e.g. 1 = keep the BOS, whose residual does not depend on the input)
keep the continuing model's own residual. Template/control tokens are `TokenClass.TEMPLATE` from
`jaxcoders.extract.text.encode_chats` (BOS is its own class and is not patched by `template`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from jaxcoders.interventions.codes import CHAT, CrosscoderEdits, InterventionError

BASIC_EDITS = ("base", "chat", "base_to_chat", "chat_to_base", "template", "template_to_base")
CROSSCODER_EDITS = ("chat_recon", "all_latents", "all_latents_no_bias", "bias_only")
DEFAULT_EDITS = BASIC_EDITS + CROSSCODER_EDITS
ALL_NAMES = DEFAULT_EDITS + ("identity", "latents", "latents:<set>", "steer")


class EditContext:
    """One batch: both residuals, the edited positions and (lazily) the crosscoder code there.

    h_base, h_chat: (B, T, D) torch tensors (model dtype); edit_mask: (B, T) bool torch tensor;
    template_mask: (B, T) bool torch tensor; cc: `CrosscoderEdits` or None.
    """

    def __init__(self, h_base, h_chat, edit_mask, template_mask, cc: Optional[CrosscoderEdits] = None):
        self.h = {"base": h_base, "chat": h_chat}
        self.edit_mask = edit_mask
        self.template_mask = template_mask
        self.cc = cc
        self._codes = None

    def rows(self, model: str):
        """The residual of `model` at the edited positions, (N, D) float32."""
        return self.h[model][self.edit_mask].float()

    def tensor(self, a):
        import torch

        return torch.as_tensor(np.array(a, np.float32), device=self.h["base"].device)

    def codes(self) -> np.ndarray:
        if self.cc is None:
            raise InterventionError("this edit needs a crosscoder; pass --crosscoder.")
        if self._codes is None:
            hb = self.rows("base").cpu().numpy()
            hc = self.rows("chat").cpu().numpy()
            self._codes = self.cc.codes(hb, hc)
        return self._codes

    def build(self, continue_with: str, rows_ND):
        """(B, T, D): the continuing model's own residual with `rows_ND` written at the edited positions."""
        out = self.h[continue_with].clone()
        out[self.edit_mask] = rows_ND.to(out.dtype)
        return out


@dataclasses.dataclass(frozen=True)
class Edit:
    """`rows(ctx)` → (N, D) float32 residual at the edited positions, or None: the unedited model."""

    name: str
    continue_with: str
    formula: str
    rows: Optional[Callable[[EditContext], object]]
    needs_crosscoder: bool = False

    def residual(self, ctx: EditContext):
        """(B, T, D) replacement for the continuing model, or None (run it unedited)."""
        if self.rows is None:
            return None
        return ctx.build(self.continue_with, self.rows(ctx))


def _template_rows(ctx: EditContext):
    import torch

    t = ctx.template_mask[ctx.edit_mask]
    return torch.where(t[:, None], ctx.rows("chat"), ctx.rows("base"))


def _latent_rows(latents: Optional[np.ndarray], bias: bool):
    def rows(ctx: EditContext):
        return ctx.rows("base") + ctx.tensor(ctx.cc.latent_delta(ctx.codes(), latents, bias=bias))
    return rows


def _bias_rows(ctx: EditContext):
    return ctx.rows("base") + ctx.tensor(ctx.cc.bias_delta())[None]


def _recon_rows(ctx: EditContext):
    return ctx.tensor(ctx.cc.reconstruction(ctx.codes(), CHAT))


def _steer_rows(latents: np.ndarray, alpha: float, source: str):
    def rows(ctx: EditContext):
        direction = ctx.tensor(ctx.cc.chat_directions(latents).sum(0))
        return ctx.rows(source) + alpha * direction[None]
    return rows


def _vanilla_rows(source: str):
    return lambda ctx: ctx.rows(source)


def make_edits(names: Sequence[str], *, latent_sets: Optional[dict] = None, steer_latents: Sequence[int] = (),
               steer_alpha: float = 1.0, steer_source: str = "base", steer_continue: str = "chat") -> list[Edit]:
    """Edits by name (see the module docstring). `latents` expands to one edit per latent set."""
    latent_sets = dict(latent_sets or {})
    for flag, v in (("steer_source", steer_source), ("steer_continue", steer_continue)):
        if v not in ("base", "chat"):
            raise InterventionError(f"--{flag} must be base or chat, got {v!r}.")
    out: list[Edit] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "base":
            out.append(Edit("base", "base", "h_b → base (unedited base model)", None))
        elif name == "chat":
            out.append(Edit("chat", "chat", "h_c → chat (unedited chat model)", None))
        elif name == "identity":
            out.append(Edit(name, "base", "h_b → base through the splice (must equal base)", _vanilla_rows("base")))
        elif name == "base_to_chat":
            out.append(Edit(name, "chat", "h_b → chat (base residual, chat upper blocks)", _vanilla_rows("base")))
        elif name == "chat_to_base":
            out.append(Edit(name, "base", "h_c → base (chat residual, base upper blocks)", _vanilla_rows("chat")))
        elif name == "template":
            out.append(Edit(name, "chat", "h_c at template tokens, h_b elsewhere → chat", _template_rows))
        elif name == "template_to_base":
            out.append(Edit(name, "base", "h_c at template tokens, h_b elsewhere → base", _template_rows))
        elif name == "chat_recon":
            out.append(Edit(name, "chat", "x̂_c(f) → chat", _recon_rows, True))
        elif name == "all_latents":
            out.append(Edit(name, "chat", "h_b + Σ_j (f_j d_j^c − f_j d_j^b) + (b_dec^c − b_dec^b) → chat",
                            _latent_rows(None, True), True))
        elif name == "all_latents_no_bias":
            out.append(Edit(name, "chat", "h_b + Σ_j f_j (d_j^c − d_j^b) → chat (reference: no bias difference)",
                            _latent_rows(None, False), True))
        elif name == "bias_only":
            out.append(Edit(name, "chat", "h_b + (b_dec^c − b_dec^b) → chat", _bias_rows, True))
        elif name == "latents" or name.startswith("latents:"):
            if not latent_sets:
                raise InterventionError(f"edit {name!r} needs latent sets; pass --latents_file.")
            wanted = list(latent_sets) if name == "latents" else [name.split(":", 1)[1]]
            for s in wanted:
                if s not in latent_sets:
                    raise InterventionError(f"edit {name!r}: no latent set {s!r} in --latents_file "
                                     f"(sets: {', '.join(latent_sets)}).")
                idx = np.asarray(latent_sets[s], np.int64)
                out.append(Edit(f"latents:{s}", "chat",
                                f"h_b + Σ_{{j∈{s}}} (f_j d_j^c − f_j d_j^b) + (b_dec^c − b_dec^b) → chat "
                                f"(|S| = {len(idx)})", _latent_rows(idx, True), True))
        elif name == "steer":
            idx = np.asarray(list(steer_latents), np.int64)
            if idx.size == 0:
                raise InterventionError("edit 'steer' needs --steer_latents (comma-separated latent indices).")
            src = "h_b" if steer_source == "base" else "h_c"
            out.append(Edit(name, steer_continue,
                            f"{src} + {steer_alpha:g} · Σ_{{j∈{{{','.join(map(str, idx))}}}}} d_j^c → {steer_continue}",
                            _steer_rows(idx, float(steer_alpha), steer_source), True))
        else:
            raise InterventionError(f"unknown edit {name!r}; choose from {', '.join(ALL_NAMES)}.")
    seen = set()
    for e in out:
        if e.name in seen:
            raise InterventionError(f"edit {e.name!r} is listed twice in --edits.")
        seen.add(e.name)
    return out
