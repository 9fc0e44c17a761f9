"""One jitted, sharded streaming pass over activations, shared by every analysis.

A pass encodes each batch once (the model's unscaled inference code; BatchTopK thresholded),
decodes it, and hands the batch's `Forward` to a tuple of accumulators (Latent Scaling, usage
statistics, ...), each of which folds it into small device-resident sums. Nothing per token
survives a step: memory is O(B·F) for the batch plus O(F) (or O(C·F)) per accumulator.

Accumulators are frozen dataclasses (static under jit) with four methods:

    aux(cfg, params)                   -> dict of host arrays the step needs (e.g. latent indices)
    init(cfg, aux, dtype)              -> state: pytree of host zeros (latent axis last)
    update(cfg, params, aux, state, fwd) -> new state (traced inside the jitted step)
    finalize(cfg, params, aux, state)  -> {"latent": {column: (S,) array}, "scalar": {name: value}}

Sources (`acts`): an (N, M, D) array (numpy, memmap or jax); anything with `num_rows` or
`__len__` and row slicing (`acts[i:j]`, or `acts.read(slice)` / `acts.read(indices)`) returning
(n, M, D) arrays, e.g. an `ActivationStore`; or an iterable of (b, M, D) batches. Rows are read
in order; the next batch is read on a background thread while the device works.

Dtypes: "float32" (default; f32 math, per-batch sums folded into Kahan-compensated f32
accumulators, finalised in float64 on the host) or "float64" (everything in f64 under a local
`jax.enable_x64` context; the process-wide setting is not touched).

Input normalization: a model that normalizes its inputs (docs/method.md §5) is analysed in its own
(normalized) space: x, x̂, decoder rows and b_dec are all taken there. Fold the normalizer into
the weights first (`jaxcoders.crosscoder.fold_normalization`) to analyse in raw units.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Iterable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxcoders.analysis import mesh as meshes
from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.crosscoder import code_normalization, model_codes, normalize_input, select_threshold
from jaxcoders.core.ops import bf16_product
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams
from jaxcoders.data import prefetch as data_prefetch
from jaxcoders.progress import progress_bar

DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------- model resolution


def resolve_model(model) -> tuple[CrossCoderConfig, CrossCoderParams, CrossCoderBuffers]:
    """(cfg, params, buffers) from a `CrossCoder`, such a triple, or a path (reference dir or workdir)."""
    if isinstance(model, (str, os.PathLike)):
        from jaxcoders.io.reference import load_reference

        model = load_reference(model)
    if isinstance(model, tuple) and len(model) == 3:
        cfg, params, buffers = model
    elif hasattr(model, "cfg") and hasattr(model, "params") and hasattr(model, "buffers"):
        cfg, params, buffers = model.cfg, model.params, model.buffers
    else:
        raise TypeError(f"expected a CrossCoder, a (cfg, params, buffers) triple or a path; got {type(model)}")
    params = CrossCoderParams(*(np.asarray(a) for a in params))
    buffers = CrossCoderBuffers(*(np.asarray(a) for a in buffers))
    return cfg, params, buffers


def model_names(num_models: int) -> tuple[str, ...]:
    """Column names of the models: index 0 = base, 1 = chat (docs/method.md notation), then m2, m3, ...;
    a single-model dictionary (M = 1, a plain SAE) has the one name "m0"."""
    if num_models == 1:
        return ("m0",)
    return ("base", "chat") + tuple(f"m{i}" for i in range(2, num_models))


# ----------------------------------------------------------------------------- the forward pass


class Forward(NamedTuple):
    """What every accumulator sees for one batch (padded rows: valid 0, code 0).

    x_BMD: crosscoder-space inputs; f: unscaled inference code (B, F), (B, M, F) (BatchTopK
    DECOUPLED) or (B, 3, F) (tied: slots shared, base, chat); xhat_BMD: f W_dec + b_dec; valid_B: 1 for real rows, 0 for padding (dtype of x);
    labels: {name: (B,) int32}, -1 on padding."""

    x_BMD: jax.Array
    f: jax.Array
    xhat_BMD: jax.Array
    valid_B: jax.Array
    labels: dict


def _mm(cfg: CrossCoderConfig, eq: str, a, b):
    """Matmul under the model's dtype policy in float32 mode; plain float64 in float64 mode."""
    if a.dtype == jnp.float64:
        return jnp.einsum(eq, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float64)
    if cfg.compute_dtype == "bfloat16":
        return bf16_product(eq, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    return jnp.einsum(eq, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def forward(cfg: CrossCoderConfig, params: CrossCoderParams, buffers: CrossCoderBuffers, x_BMD, valid_B,
            labels=None) -> Forward:
    """The model's inference code and reconstruction, in the dtype of x (the math of
    `jaxcoders.crosscoder.encode`/`decode`, kept dtype-generic so float64 mode stays float64)."""
    x_BMD = normalize_input(cfg, buffers, x_BMD)
    f_BF = jax.nn.relu(_mm(cfg, "bmd,mdf->bf", x_BMD, params.w_enc_MDF) + params.b_enc_F)
    f_BF = f_BF * valid_B[:, None]
    if cfg.is_tied:  # (B, 3F) latent-major, slot-minor -> slots (B, 3, F); decoded per model
        f = jnp.transpose(f_BF.reshape(f_BF.shape[0], cfg.dict_size, 3), (0, 2, 1))
        xhat_BMD = _mm(cfg, "bmf,mfd->bmd", model_codes(f), params.w_dec_MFD) + params.b_dec_MD
        return Forward(x_BMD, f, xhat_BMD, valid_B, labels or {})
    f = f_BF
    if cfg.is_batchtopk:
        c = code_normalization(cfg, params.w_dec_MFD)
        f = select_threshold(cfg, f_BF, c, buffers.threshold)
    eq = "bf,mfd->bmd" if f.ndim == 2 else "bmf,mfd->bmd"
    xhat_BMD = _mm(cfg, eq, f, params.w_dec_MFD) + params.b_dec_MD
    return Forward(x_BMD, f, xhat_BMD, valid_B, labels or {})


# ----------------------------------------------------------------------------- helpers for accumulators


def kahan_add(acc: dict, updates: dict) -> dict:
    """Compensated summation: acc = {"sum": {k: a}, "comp": {k: c}}; adds updates[k] to each sum."""
    s, c = dict(acc["sum"]), dict(acc["comp"])
    for k, v in updates.items():
        y = v.astype(s[k].dtype) - c[k]
        t = s[k] + y
        c[k] = (t - s[k]) - y
        s[k] = t
    return {"sum": s, "comp": c}


def kahan_init(shapes: dict, dtype) -> dict:
    return {"sum": {k: np.zeros(v, dtype) for k, v in shapes.items()},
            "comp": {k: np.zeros(v, dtype) for k, v in shapes.items()}}


def kahan_value(acc: dict) -> dict:
    """Host-side float64 totals of a (fetched) Kahan accumulator."""
    return {k: np.asarray(acc["sum"][k], np.float64) - np.asarray(acc["comp"][k], np.float64) for k in acc["sum"]}


def per_model_code(f, m: int):
    """The code model m decodes with: f (B, F) itself, or f[:, m] for a (B, M, F) DECOUPLED code."""
    return f if f.ndim == 2 else f[:, m]


# ----------------------------------------------------------------------------- batch sources


def num_rows(acts) -> Optional[int]:
    if isinstance(acts, (list, tuple)):  # a sequence of batches
        return sum(len(b) for b in acts)
    n = getattr(acts, "num_rows", None)
    if n is not None:
        return int(n)
    if hasattr(acts, "shape"):
        return int(acts.shape[0])
    try:
        return len(acts)
    except TypeError:
        return None


def _read_rows(acts, i: int, j: int) -> np.ndarray:
    if hasattr(acts, "__getitem__"):
        return np.asarray(acts[i:j])
    try:
        return np.asarray(acts.read(slice(i, j)))
    except (TypeError, ValueError, IndexError):
        return np.asarray(acts.read(np.arange(i, j)))


def _rebatch(batches: Iterable, batch_size: int, max_rows: Optional[int]) -> Iterator[tuple[np.ndarray, dict]]:
    buf, have, seen = [], 0, 0
    for b in batches:
        b = np.asarray(b)
        if max_rows is not None:
            b = b[: max(0, max_rows - seen)]
        seen += len(b)
        buf.append(b)
        have += len(b)
        while have >= batch_size:
            cat = np.concatenate(buf)
            yield cat[:batch_size], {}
            buf, have = [cat[batch_size:]], have - batch_size
        if max_rows is not None and seen >= max_rows:
            break
    if have:
        yield np.concatenate(buf), {}


def prefetch_iter(gen, n: int = 2):
    """The items of `gen`, produced by a background thread up to `n` items ahead (n <= 0: inline).
    An exception in the producer is re-raised here; closing the consumer stops the producer
    (`jaxcoders.data.prefetch.prefetch_iter`)."""
    return data_prefetch.prefetch_iter(gen, n)


def iter_batches(acts, batch_size: int, *, labels: Optional[dict] = None, max_rows: Optional[int] = None,
                 prefetch: int = 2) -> Iterator[tuple[np.ndarray, dict]]:
    """(x (b, M, D), {label: (b,)}) in row order, b <= batch_size; read `prefetch` batches ahead."""
    labels = labels or {}
    # row-addressable: arrays and stores; lists, tuples and generators are sequences of batches
    sliceable = not isinstance(acts, (list, tuple)) and (
        hasattr(acts, "shape") or hasattr(acts, "num_rows") or (hasattr(acts, "read") and hasattr(acts, "__len__")))
    n = num_rows(acts) if sliceable else None
    if not sliceable:
        if labels:
            raise ValueError("per-row labels need a sliceable activation source (array or store), not an iterator")
        gen = _rebatch(acts, batch_size, max_rows)
    else:
        stop = n if max_rows is None else min(n, int(max_rows))
        for name, lab in labels.items():
            if num_rows(lab) is not None and num_rows(lab) < stop:
                raise ValueError(f"labels {name!r} have {num_rows(lab)} rows but the activations have {stop}")

        def gen_fn():
            for i in range(0, stop, batch_size):
                j = min(i + batch_size, stop)
                yield _read_rows(acts, i, j), {k: np.asarray(v[i:j]) for k, v in labels.items()}

        gen = gen_fn()
    yield from prefetch_iter(gen, prefetch)


# ----------------------------------------------------------------------------- the pass


def _state_specs(tree, num_latents: int, mesh: Mesh):
    return jax.tree.map(lambda a: meshes.latent_spec(tuple(np.shape(a)), num_latents, mesh), tree)


@functools.partial(jax.jit, static_argnames=("cfg", "accs", "mesh"), donate_argnames=("states",))
def _step(params, buffers, auxs, states, bad, x_BMD, valid_B, labels, *, cfg, accs, mesh):
    dtype = params.w_enc_MDF.dtype
    x = x_BMD.astype(dtype)
    finite = jnp.all(jnp.isfinite(x), axis=(1, 2))
    bad = bad + jnp.sum(jnp.where(valid_B > 0, ~finite, False)).astype(bad.dtype)
    fwd = forward(cfg, params, buffers, x, valid_B.astype(dtype), labels)
    new = tuple(acc.update(cfg, params, aux, st, fwd) for acc, aux, st in zip(accs, auxs, states))
    specs = _state_specs(new, cfg.dict_size, mesh)
    new = jax.tree.map(lambda a, s: jax.lax.with_sharding_constraint(a, meshes.sharding(mesh, *s)), new, specs)
    return new, bad


def _prepare(cfg, params, buffers, accs, dtype: str, mesh: Mesh):
    """Model state in the pass dtype and accumulator aux/state, placed on the mesh (call inside
    the pass's x64 context). Returns (params, buffers, host auxs, device auxs, device states)."""
    np_dtype = np.float64 if dtype == "float64" else np.float32
    put = lambda tree, specs: jax.tree.map(lambda a, s: jax.device_put(a, meshes.sharding(mesh, *s)), tree, specs)
    params_np = CrossCoderParams(*(np.asarray(a, np_dtype) for a in params))
    buffers_np = CrossCoderBuffers(*(np.asarray(a, np_dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
                                        for a in buffers))
    auxs_np = tuple(acc.aux(cfg, params_np) for acc in accs)
    states_np = tuple(acc.init(cfg, aux, np_dtype) for acc, aux in zip(accs, auxs_np))
    return (put(params_np, meshes.param_specs()), put(buffers_np, meshes.buffer_specs()), auxs_np,
            put(auxs_np, _state_specs(auxs_np, cfg.dict_size, mesh)),
            put(states_np, _state_specs(states_np, cfg.dict_size, mesh)))


@dataclasses.dataclass
class PassResult:
    results: list  # one finalize() dict per accumulator
    num_tokens: int
    seconds: float


def run_pass(model, acts, accumulators, *, batch_size: int = 4096, dtype: str = "float32",
             mesh: Optional[Mesh] = None, labels: Optional[dict] = None, max_rows: Optional[int] = None,
             progress: bool = False, prefetch: int = 2) -> PassResult:
    """Stream `acts` through the model once and feed every accumulator (see the module docstring).

    Args:
      model: `CrossCoder`, (cfg, params, buffers) or a path (reference directory or workdir).
      acts: (N, M, D) array, ActivationStore-like object, or iterable of batches.
      accumulators: sequence of accumulator dataclasses.
      batch_size: tokens per step (rounded up to a multiple of the mesh's data axis).
      dtype: "float32" or "float64" (see module docstring).
      mesh: a ("data", "latent") mesh; default all devices on "data".
      labels: {name: (N,) int array} per-row class labels (e.g. token classes), -1 = no class.
      max_rows: stop after this many rows.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cfg, params, buffers = resolve_model(model)
    accs = tuple(accumulators)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    n_data, n_lat = meshes.axis_size(mesh, meshes.DATA), meshes.axis_size(mesh, meshes.LATENT)
    if cfg.dict_size % n_lat:
        raise ValueError(f"dict_size {cfg.dict_size} is not divisible by the mesh's latent axis ({n_lat}); "
                         "choose a latent axis size that divides F")
    B = -(-int(batch_size) // n_data) * n_data
    t0 = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        params_d, buffers_d, auxs_np, auxs, states = _prepare(cfg, params, buffers, accs, dtype, mesh)
        bad = jax.device_put(np.zeros((), np.int32), meshes.sharding(mesh))
        x_sh = meshes.sharding(mesh, *meshes.batch_spec())
        row_sh = meshes.sharding(mesh, meshes.DATA)
        label_names = tuple(sorted((labels or {}).keys()))

        total = num_rows(acts)
        if total is not None and max_rows is not None:
            total = min(total, int(max_rows))
        bar = progress_bar(total, "analysis pass", "tok", unit_scale=True) if progress else None
        n_tok = 0
        M, D = cfg.num_models, cfg.activation_dim
        for x_np, lab_np in iter_batches(acts, B, labels=labels, max_rows=max_rows, prefetch=prefetch):
            if x_np.ndim != 3 or x_np.shape[1:] != (M, D):
                raise ValueError(f"activation batch has shape {x_np.shape}; the crosscoder expects (n, {M}, {D})")
            n = x_np.shape[0]
            if not np.issubdtype(x_np.dtype, np.floating) and x_np.dtype.name != "bfloat16":
                raise ValueError(f"activations must be floats, got dtype {x_np.dtype}")
            if n < B:  # the last batch: pad (one compiled shape), padded rows carry valid = 0
                x_np = np.concatenate([x_np, np.zeros((B - n,) + x_np.shape[1:], x_np.dtype)])
            valid = np.zeros((B,), np.float32)
            valid[:n] = 1.0
            lab = {}
            for k in label_names:
                v = np.full((B,), -1, np.int32)
                v[:n] = np.asarray(lab_np[k], np.int32)
                lab[k] = jax.device_put(v, row_sh)
            states, bad = _step(params_d, buffers_d, auxs, states, bad, jax.device_put(x_np, x_sh),
                                jax.device_put(valid, row_sh), lab, cfg=cfg, accs=accs, mesh=mesh)
            n_tok += n
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        states_host = jax.device_get(states)
        n_bad = int(jax.device_get(bad))
    if n_tok == 0:
        raise ValueError("the activation source is empty: no rows to analyse")
    if n_bad:
        raise ValueError(f"{n_bad} of {n_tok} activation rows contain NaN or inf values; clean the store "
                         "(or drop those rows) before analysing")
    results = [acc.finalize(cfg, params, aux, st) for acc, aux, st in zip(accs, auxs_np, states_host)]
    return PassResult(results, n_tok, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- benchmark baselines


@dataclasses.dataclass(frozen=True)
class EncodeBaseline:
    """A do-almost-nothing accumulator (Σ_n f per latent, or Σ_n x̂ with decode=True): timing
    the pass with it measures a plain encode (or encode + decode) pass through the same driver."""

    decode: bool = False

    def aux(self, cfg, params):
        return {}

    def init(self, cfg, aux, dtype):
        return np.zeros((cfg.activation_dim,) if self.decode else (cfg.dict_size,), dtype)

    def update(self, cfg, params, aux, state, fwd):
        if self.decode:
            return state + jnp.sum(fwd.xhat_BMD, axis=(0, 1))
        f = fwd.f if fwd.f.ndim == 2 else jnp.sum(fwd.f, axis=1)
        return state + jnp.sum(f, axis=0)

    def finalize(self, cfg, params, aux, state):
        return {"latent": {}, "scalar": {}}


def step_memory(model, accumulators, *, batch_size: int, dtype: str = "float32", mesh: Optional[Mesh] = None) -> dict:
    """XLA's memory analysis of one compiled step (bytes): arguments, outputs, temporaries."""
    cfg, params, buffers = resolve_model(model)
    accs = tuple(accumulators)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    with jax.enable_x64(dtype == "float64"):
        params_d, buffers_d, _, auxs, states = _prepare(cfg, params, buffers, accs, dtype, mesh)
        x = np.zeros((batch_size, cfg.num_models, cfg.activation_dim), np.float32)
        compiled = _step.lower(params_d, buffers_d, auxs, states, np.zeros((), np.int32), x,
                               np.ones((batch_size,), np.float32), {}, cfg=cfg, accs=accs, mesh=mesh).compile()
        ma = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {k: int(getattr(ma, k, 0) or 0) for k in keys}


def step_timer(model, accumulators, *, batch_size: int, dtype: str = "float32", mesh: Optional[Mesh] = None,
               seed: int = 0):
    """A function `run(steps) -> seconds` timing the compiled step alone on one random device-resident
    batch (no host reads or transfers): the compute cost of a pass per `batch_size` tokens."""
    cfg, params, buffers = resolve_model(model)
    accs = tuple(accumulators)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    x = np.random.default_rng(seed).standard_normal((batch_size, cfg.num_models, cfg.activation_dim), np.float32)

    def run(steps: int) -> float:
        with jax.enable_x64(dtype == "float64"):
            params_d, buffers_d, _, auxs, states = _prepare(cfg, params, buffers, accs, dtype, mesh)
            bad = jax.device_put(np.zeros((), np.int32), meshes.sharding(mesh))
            x_d = jax.device_put(x, meshes.sharding(mesh, *meshes.batch_spec()))
            valid = jax.device_put(np.ones((batch_size,), np.float32), meshes.sharding(mesh, meshes.DATA))
            step = functools.partial(_step, cfg=cfg, accs=accs, mesh=mesh)
            states, bad = step(params_d, buffers_d, auxs, states, bad, x_d, valid, {})  # compile / warm up
            jax.block_until_ready(states)
            t0 = time.perf_counter()
            for _ in range(steps):
                states, bad = step(params_d, buffers_d, auxs, states, bad, x_d, valid, {})
            jax.block_until_ready(states)
            return time.perf_counter() - t0

    return run
