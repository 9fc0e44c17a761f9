"""The online half's models, loaded once per dashboard process (torch + the JAX crosscoder).

`ModelSession(spec)` holds:

* the crosscoder as `jaxcoders.interventions.codes.CrosscoderEdits` (codes, raw-space decoder
  directions);
* the base model truncated after block L (`jaxcoders.extract.models.LayerActivations`: the later
  blocks are not even kept);
* the full chat model (steering continues it past block L) with the site where its residual after
  block L is read / edited (`jaxcoders.interventions.splice.SplitLM(...).site`: block L's output,
  the final norm's for the last block). `chat_residual(ids)` stops the forward right after that
  site, so both models run to layer L only;
* both tokenizers (prompts are tokenized with the chat tokenizer, as in extraction; the ids are
  checked against the base tokenizer and both vocabularies).

`residuals(ids (T,))` → (h_base (T, D), h_chat (T, D)) float32 numpy, counted in `forwards` (one
per prompt: the prompt cache sits above this). A lock serializes the models: Streamlit runs every
browser session's script in its own thread.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from jaxcoders.dashboard.inputs import DashboardError, DashboardSpec

CACHE_SIZE = 32  # prompts whose analysis is kept


class _StopAfterLayer(Exception):
    pass


class ModelSession:
    """Crosscoder + base (to block L) + chat (full) + tokenizers; see the module docstring."""

    def __init__(self, spec: DashboardSpec):
        import torch

        from jaxcoders.extract import models as models_lib
        from jaxcoders.extract import text as text_lib
        from jaxcoders.extract.models import ModelError
        from jaxcoders.interventions.codes import CrosscoderEdits, InterventionError
        from jaxcoders.interventions.splice import SplitLM
        from jaxcoders.io.hub import ReferenceFormatError

        self.spec = spec
        self.layer = int(spec.layer)
        try:
            self.cc = CrosscoderEdits(spec.crosscoder)
            self.device = models_lib.resolve_device(spec.device)
            self.chat_tok = models_lib.load_tokenizer(spec.chat_model, None, "--chat_model")
            self.base_tok = models_lib.load_tokenizer(spec.base_model, None, "--base_model")
            infos = {"--base_model": models_lib.load_config(spec.base_model, None, "--base_model"),
                     "--chat_model": models_lib.load_config(spec.chat_model, None, "--chat_model")}
            models_lib.check_layer(self.layer, infos)
            for flag, info in infos.items():
                if info.d_model != self.cc.activation_dim:
                    raise DashboardError(f"dimension mismatch: --crosscoder has D = {self.cc.activation_dim} but "
                                         f"{flag}={info.name} has hidden size {info.d_model}; use the crosscoder "
                                         "trained on these models")
            self.vocab_limits = {f"{flag}={info.name}": info.vocab_size for flag, info in infos.items()}
            self.mismatch = text_lib.tokenizer_mismatch(self.base_tok, self.chat_tok)
            self.base = models_lib.LayerActivations(spec.base_model, self.layer, dtype=spec.model_dtype,
                                                    device=self.device, flag="--base_model")
            chat = models_lib.load_causal_lm(spec.chat_model, dtype=spec.model_dtype, flag="--chat_model")
            self.chat = chat.to(self.device)
            split = SplitLM(self.chat, self.layer, name=f"--chat_model={spec.chat_model}")
            self.site = split.site
            split.close()  # only its choice of site is kept; the hooks below do the rest
        except (ModelError, InterventionError, ReferenceFormatError) as e:
            raise DashboardError(str(e)) from None
        self.torch = torch
        self.lock = threading.RLock()
        self.forwards = 0  # prompts run through both models (the cache's misses)
        self.cache: OrderedDict = OrderedDict()
        self.latent_facts = None  # (tags, Δnorm, decoder norms and channel scales): jaxcoders.dashboard.prompt
        self._add = None  # (direction (D,) tensor, skip positions) while steering
        self._stop = False
        self._captured = None
        self._handle = self.site.register_forward_hook(self._hook)

    # ------------------------------------------------------------------ the chat model's site
    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if self._stop:
            self._captured = h
            raise _StopAfterLayer
        if self._add is None:
            return None
        direction, skip = self._add
        h = h.clone()
        start = min(skip["left"], h.shape[1])
        h[:, start:] += direction.to(dtype=h.dtype, device=h.device)
        skip["left"] = max(0, skip["left"] - h.shape[1])  # later (cached) steps start past the skipped ones
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    def chat_residual(self, ids_1T):
        """The chat model's residual after block L, (1, T, D), running blocks 0..L only."""
        self._stop, self._captured = True, None
        try:
            with self.torch.inference_mode():
                self.chat(input_ids=ids_1T, use_cache=False)
        except _StopAfterLayer:
            pass
        finally:
            self._stop = False
        h, self._captured = self._captured, None
        if h is None:
            raise DashboardError(f"block {self.layer} of the chat model did not run; its forward is unusual")
        return h

    def residuals(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h_base (T, D), h_chat (T, D)) float32 after block L for token ids (T,)."""
        with self.lock:
            x = self.torch.as_tensor(np.asarray(ids, np.int64)[None], device=self.device)
            hb = self.base(x)[0].float().cpu().numpy()
            hc = self.chat_residual(x)[0].float().cpu().numpy()
            self.forwards += 1
        return hb, hc

    def steer(self, direction_D, skip_first: int = 1):
        """Context manager: while it is open, the chat model's residual after block L gets
        `direction_D` (D,) added at every position from `skip_first` on (prompt and generated)."""
        session = self

        class _Steer:
            def __enter__(self):
                d = session.torch.as_tensor(np.asarray(direction_D, np.float32), device=session.device)
                session._add = (d, {"left": int(skip_first)})
                return self

            def __exit__(self, *exc):
                session._add = None
                return False

        return _Steer()

    # ------------------------------------------------------------------ facts
    @property
    def dict_size(self) -> int:
        return self.cc.dict_size

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.chat_tok, "chat_template", None))

    def cached(self, key, compute):
        """The cached value of `key`, else `compute()` stored under it (least recently used out)."""
        with self.lock:  # held while computing: two sessions asking for one prompt run it once
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            value = compute()
            self.cache[key] = value
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        return value

    def close(self) -> None:
        self._handle.remove()
