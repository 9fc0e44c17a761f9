"""A causal LM split after block L (torch): read the residual there, or replace it and continue.

"The residual after block L" is HF's `hidden_states[L + 1]` (docs/method.md §8), the tensor the
crosscoder was trained on. A forward hook on block L (for the last block: on the final norm, whose
output is HF's last `hidden_states` entry) records that tensor and, when a replacement is set,
returns the replacement instead, so blocks L+1.. (or the LM head) continue from the edited residual.
The model's own `forward` runs unchanged around it: embedding scale, rotary position embeddings,
causal / sliding-window masks, Gemma-2 logit soft-capping are exactly HF's. The price is that the
lower blocks run again for every edit (one full forward per edit), which keeps every architecture
correct without re-implementing its mask and position plumbing.

Replacing the residual by the tensor the hook just recorded reproduces `model(ids).logits` bit for
bit (tested).
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

from jaxcoders.extract import models as models_lib
from jaxcoders.extract.models import ModelError


class SplitLM:
    """`run(ids, attention_mask, replace=None, keep=None) -> (logits (B, K, V), h (B, T, D))`.

    `h` is the residual after block `layer` *as the model computed it* (before any replacement);
    `replace` (B, T, D) is what blocks `layer + 1..` see instead. `keep` (1-D LongTensor of positions)
    restricts the LM head to those positions (HF `logits_to_keep`) — a large-vocabulary model then
    never materialises (B, T, V) logits.
    """

    def __init__(self, model, layer: int, name: str = "model"):
        import torch

        self.model = model
        self.name = name
        decoder, layers = models_lib._decoder_layers(model)
        n = len(layers)
        if not 0 <= layer < n:
            raise ModelError(f"--layer={layer} does not exist in {name} ({n} blocks); use 0 ≤ --layer ≤ {n - 1}.")
        if layer == n - 1:  # HF's last hidden_states entry is the final-norm output
            site = getattr(decoder, "norm", None) or getattr(decoder, "final_layernorm", None)
            if site is None:
                raise ModelError(f"--layer={layer} is the last block of {name} but its final norm was not found.")
        else:
            site = layers[layer]
        self.layer = layer
        self.num_layers = n
        self.site = site
        self._replacement: Optional[torch.Tensor] = None
        self._captured: Optional[torch.Tensor] = None
        self._handle = site.register_forward_hook(self._hook)
        params = inspect.signature(model.forward).parameters
        self._supports_keep = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        self._captured = h
        r = self._replacement
        if r is None:
            return None
        if r.shape != h.shape:
            raise ValueError(f"replacement residual has shape {tuple(r.shape)}, {self.name} computed {tuple(h.shape)}.")
        r = r.to(device=h.device, dtype=h.dtype)
        return (r,) + tuple(output[1:]) if isinstance(output, tuple) else r

    def run(self, input_ids_BT, attention_mask_BT=None, *, replace=None, keep=None):
        import torch

        kwargs: dict[str, Any] = {"input_ids": input_ids_BT, "attention_mask": attention_mask_BT, "use_cache": False}
        if keep is not None and self._supports_keep:
            kwargs["logits_to_keep"] = keep
        self._replacement = replace
        self._captured = None
        try:
            with torch.inference_mode():
                logits = self.model(**kwargs).logits
        finally:
            self._replacement = None
        h, self._captured = self._captured, None
        if h is None:
            raise ModelError(f"block {self.layer} of {self.name} did not run; the model's forward is unusual.")
        if keep is not None and not self._supports_keep:
            logits = logits[:, keep]
        return logits, h

    def close(self) -> None:
        self._handle.remove()


def load_split_model(name: str, layer: int, *, revision: Optional[str] = None, dtype: str = "float32",
                     device: str = "cpu", attn_implementation: Optional[str] = None, flag: str = "--model") -> SplitLM:
    """Load a full causal LM (every block: the upper ones continue the edited residual) and split it."""
    import torch  # noqa: F401  (fail here, clearly, when torch is missing)

    model = models_lib.load_causal_lm(name, revision=revision, dtype=dtype, attn_implementation=attn_implementation,
                                      flag=flag)
    model = model.to(models_lib.resolve_device(device))
    return SplitLM(model, layer, name=f"{flag}={name}")
