"""Load a causal LM with `transformers` and compute its residual stream after block L (torch).

"After block L" is HF's `hidden_states[L + 1]` (docs/method.md §8). The forward pass stops after
block L: the decoder layers after L are deleted from the loaded model (their memory is freed) and
a forward hook on block L records its output and raises `_StopForward`, so neither the later
blocks, the final norm nor the LM head run. Everything up to block L is the model's own, unmodified
forward (embedding scale, rotary embeddings, Gemma-2's alternating sliding-window masks and
soft-capping), called exactly as `model(input_ids)` would call it, so the captured tensor equals
`model(input_ids, output_hidden_states=True).hidden_states[L + 1]` bit for bit.
HF replaces the *last* entry of `hidden_states` by the final-norm output; for L = num_layers - 1
the final norm is therefore applied here too.
"""
from __future__ import annotations

import dataclasses
from typing import Any


class ModelError(ValueError):
    """Model loading / layer problems, phrased as what to change."""


class _StopForward(Exception):
    pass


TORCH_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    commit_hash: str | None
    model_type: str


def load_config(name: str, revision: str | None, flag: str) -> ModelInfo:
    """Read a model's config (no weights) for early validation."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name, revision=revision)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not load {flag}={name}: {msg}") from e
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return ModelInfo(
        name=name,
        num_layers=int(text.num_hidden_layers),
        d_model=int(text.hidden_size),
        vocab_size=int(text.vocab_size),
        commit_hash=getattr(cfg, "_commit_hash", None),
        model_type=str(getattr(cfg, "model_type", "")),
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def weights_fingerprint(name: str) -> str | None:
    """For a model in a local directory: a fingerprint of its weight files (name, size and sampled
    blocks of each: `jaxcoders.files.sampled_digest`), so that a resumed extraction notices weights
    replaced in place. None for hub names (their commit hash identifies the weights)."""
    import hashlib
    from pathlib import Path

    from jaxcoders.files import sampled_digest

    root = Path(name)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}={sampled_digest(p)};".encode())
    return h.hexdigest()[:32]


def check_layer(layer: int, infos: dict[str, ModelInfo]) -> None:
    for flag, info in infos.items():
        if not 0 <= layer < info.num_layers:
            raise ModelError(
                f"--layer={layer} does not exist in {flag}={info.name}, which has {info.num_layers} blocks; "
                f"use 0 ≤ --layer ≤ {info.num_layers - 1} (hidden_states[L+1] = output of block L)."
            )
    dims = {flag: info.d_model for flag, info in infos.items()}
    if len(set(dims.values())) != 1:
        raise ModelError(f"base and chat models must have the same hidden size, got {dims}; pick a matching pair.")


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelError(f"--model_dtype must be one of {', '.join(TORCH_DTYPES)}, got {name!r}.") from None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _decoder_layers(model) -> tuple[Any, Any]:
    """(decoder module, its ModuleList of blocks) for HF decoder-only LMs."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if layers is not None:
            return decoder, layers
    raise ModelError(
        f"cannot find the decoder blocks of {type(model).__name__} (expected model.model.layers); "
        "this architecture is not supported yet."
    )



def load_causal_lm(name: str, *, revision: str | None = None, dtype: str = "float32",
                   attn_implementation: str | None = None, flag: str = "--model"):
    """`AutoModelForCausalLM.from_pretrained(name)` in eval mode without gradients; any loading
    failure becomes one ModelError sentence naming the flag."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not load {flag}={name}: {msg}") from e
    return model.eval().requires_grad_(False)

class LayerActivations:
    """One model, truncated after block `layer`; `__call__(ids_BT) -> hidden_states[layer+1] (B, T, D)`."""

    def __init__(self, name: str, layer: int, *, revision: str | None = None, dtype: str = "float32",
                 device: str = "cpu", attn_implementation: str | None = None, flag: str = "--model"):
        import torch  # noqa: F401  (fail here, clearly, when torch is missing)

        model = load_causal_lm(name, revision=revision, dtype=dtype, attn_implementation=attn_implementation,
                               flag=flag)
        decoder, layers = _decoder_layers(model)
        n = len(layers)
        if not 0 <= layer < n:
            raise ModelError(f"--layer={layer} does not exist in {flag}={name} ({n} blocks).")
        self.final_norm = None
        if layer == n - 1:  # HF's last hidden_states entry is the final-norm output
            self.final_norm = getattr(decoder, "norm", None) or getattr(decoder, "final_layernorm", None)
            if self.final_norm is None:
                raise ModelError(f"--layer={layer} is the last block of {flag}={name} but its final norm was not found.")
        del layers[layer + 1:]  # never run; frees their memory
        self.model = model.to(device)
        self.device = device
        self.name = name
        self.layer = layer
        self.dtype = next(model.parameters()).dtype
        self._captured = None
        layers[layer].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    def __call__(self, input_ids_BT, attention_mask_BT=None):
        """Residual stream after block L for a (B, T) LongTensor on the model's device: (B, T, D)."""
        import torch

        self._captured = None
        with torch.inference_mode():
            try:
                self.model(input_ids=input_ids_BT, attention_mask=attention_mask_BT)
            except _StopForward:
                pass
            h = self._captured
            if h is None:
                raise ModelError(f"block {self.layer} of {self.name} did not run; the model's forward is unusual.")
            if self.final_norm is not None:
                h = self.final_norm(h)
        self._captured = None
        return h


def load_tokenizer(name: str, revision: str | None, flag: str):
    """`AutoTokenizer.from_pretrained`; a failure becomes one ModelError naming the flag."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, revision=revision)
    except Exception as e:
        raise ModelError(f"could not load the tokenizer of {flag}={name}: {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
