"""`collect_examples`: the examples pass from arguments to result, in named steps — argument checks,
latent selection (S,), batch layout (B rows, G sequences per step), memory checks, bucket thresholds
(E, S), the device inputs, the streamed pass over padded batches (B, M, D) and the result
{"meta", "examples", "latents"} for `write_examples`."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import jax
import numpy as np

from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams
from jaxcoders.analysis import decoder
from jaxcoders.analysis import mesh as meshes
from jaxcoders.analysis import stream
from jaxcoders.analysis.stats import token_class_names
from jaxcoders.analysis.examples.channels import channel_scales, code_channels, output_channels
from jaxcoders.analysis.examples.finalize import finalize_examples
from jaxcoders.analysis.examples.keys import seed_word
from jaxcoders.analysis.examples.latent_columns import latent_columns
from jaxcoders.analysis.examples.max_pass import max_activations
from jaxcoders.analysis.examples.meta import pass_meta, source_meta
from jaxcoders.analysis.examples.model import load_model
from jaxcoders.analysis.examples.progress import progress_bar
from jaxcoders.analysis.examples.rows import RowInfo, sequence_batches
from jaxcoders.analysis.examples.spec import (ABOVE_MARGIN, DEFAULT_FRACTIONS, Spec, bucket_table, init_state,
                                              output_bytes, state_bytes)
from jaxcoders.analysis.examples.step import fold_batch, latent_last


def rows_to_collect(info: RowInfo, max_rows: Optional[int]) -> int:
    """The number of leading rows the pass reads (checked: a row-addressable, non-empty source)."""
    N = info.num_rows
    if N is None:
        raise ValueError("collect_examples needs a row-addressable source (an (N, M, D) array or an ActivationStore)")
    if N >= 2 ** 31 - 1:
        raise ValueError(f"{N} rows: row indices are int32; collect examples over fewer rows (--max_tokens)")
    stop = N if max_rows is None else min(N, int(max_rows))
    if stop == 0:
        raise ValueError("the activation source is empty: no rows to collect examples from")
    return stop


def checked_fractions(fractions: Sequence[float], per_bucket: int, before: int, after: int) -> tuple:
    """The bucket edges as a float tuple, after checking them and the bucket / window sizes."""
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(b <= a for a, b in zip((0.0,) + fractions, fractions)):
        raise ValueError(f"fractions must be increasing and positive, got {fractions}")
    if per_bucket < 1 or before < 0 or after < 0:
        raise ValueError("per_bucket must be >= 1, before and after >= 0")
    return fractions


def selected_latents(model, latents) -> np.ndarray:
    """(S,) int32 latent indices from indices, a boolean mask, a `decoder.select_latents` selector or None (all)."""
    F = model[0].dict_size
    if isinstance(latents, str):
        latents = decoder.select_latents(model, latents)
    lat = np.arange(F) if latents is None else np.asarray(latents)
    if lat.dtype == bool:
        lat = np.flatnonzero(lat)
    lat = lat.astype(np.int32)
    if lat.size == 0:
        raise ValueError("no latents selected: nothing to collect")
    if lat.min() < 0 or lat.max() >= F:
        raise ValueError(f"latent indices must be in [0, {F})")
    return lat


def batch_layout(cfg, mesh, batch_size: int, max_sequences: int) -> tuple[int, int, int]:
    """(B rows per step, a multiple of the data axis; G sequences per step; the latent axis size)."""
    n_data, n_lat = meshes.axis_size(mesh, meshes.DATA), meshes.axis_size(mesh, meshes.LATENT)
    if cfg.encoder_width % n_lat:
        raise ValueError(f"dict_size {cfg.dict_size} is not divisible by the mesh's latent axis ({n_lat})")
    B = -(-int(batch_size) // n_data) * n_data
    return B, max(1, min(int(max_sequences), B)), n_lat


def check_memory(cfg, spec: Spec, S: int, n_lat: int, max_state_bytes: float, max_output_bytes: float) -> None:
    """Refuse to start when the device state per device or the host output would exceed its limit."""
    R = spec.num_reservoirs
    fix = ("select latents (--latents=chat-only|base-only|exclusive|...), lower --per_bucket or the window (host "
           "output), shard latents over devices (--mesh_latent: device state)")
    need = state_bytes(S, spec) / n_lat
    if need > max_state_bytes:
        raise ValueError(f"the examples state needs {need / 2 ** 30:.2f} GiB per device ({S} latents × "
                         f"{(1 + R) * spec.per_bucket} examples × 12 bytes), above the limit of "
                         f"{max_state_bytes / 2 ** 30:.2f} GiB (--max_state_gb): {fix}")
    out_need = output_bytes(S, spec, len(output_channels(cfg)))
    if out_need > max_output_bytes:
        raise ValueError(f"the examples may need {out_need / 2 ** 30:.2f} GiB of host memory ({S} latents × "
                         f"{(1 + R) * spec.per_bucket} examples × window {spec.window}), above the limit of "
                         f"{max_output_bytes / 2 ** 30:.2f} GiB (--max_output_gb): {fix}")


def bucket_thresholds(max_activation: np.ndarray, lat: np.ndarray, fractions: tuple, above: bool) -> np.ndarray:
    """(E, S) float32 inner bucket edges × each latent's max (with `above`: the last fraction, raised
    by ABOVE_MARGIN, is an edge too)."""
    edges = np.asarray(fractions[:-1] if not above else fractions[:-1] + (fractions[-1] * (1 + ABOVE_MARGIN),))
    thr = max_activation[lat][None, :] * edges[:, None]
    return thr.reshape(-1, lat.size).astype(np.float32)


def device_inputs(model, mesh, spec: Spec, lat: np.ndarray, thr: np.ndarray):
    """(params, buffers, consts, state) on the mesh: params sharded, consts and state latent-sharded."""
    cfg, params, buffers = model
    C, S = len(code_channels(cfg)), int(lat.size)
    put = lambda a, spec_: jax.device_put(a, meshes.sharding(mesh, *spec_))
    p_d = jax.device_put(CrossCoderParams(*(np.asarray(a, np.float32) for a in params)),
                         jax.tree.map(lambda s: meshes.sharding(mesh, *s), meshes.param_specs()))
    b_d = jax.device_put(CrossCoderBuffers(*(np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f"
                                                else np.asarray(a) for a in buffers)), meshes.sharding(mesh))
    consts = {"latents": put(lat, latent_last((S,), mesh)),
              "scales": put(channel_scales(cfg, params)[:, lat].astype(np.float32), latent_last((C, S), mesh)),
              "thresholds": put(thr, latent_last(thr.shape, mesh))}
    state = {k: put(v, latent_last(v.shape, mesh)) for k, v in init_state(spec, S, C).items()}
    return p_d, b_d, consts, state


def padded_batch(bt: dict, B: int, G: int, M: int, D: int):
    """(x (B, M, D), valid, fresh, seg, cls (B,)) of a `sequence_batches` batch padded to B rows
    (checked: the crosscoder's shape, finite values)."""
    x, n = bt["x"], bt["n"]
    if x.ndim != 3 or x.shape[1:] != (M, D):
        raise ValueError(f"activation batch has shape {x.shape}; the crosscoder expects (n, {M}, {D})")
    pad = B - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    valid = np.r_[np.ones(n, np.float32), np.zeros(pad, np.float32)]
    fresh = np.r_[bt["fresh"], np.zeros(pad, np.float32)]
    seg = np.r_[bt["seg"], np.full(pad, G, np.int32)]
    cls = np.full(B, -1, np.int32)
    if bt["cls"] is not None:
        cls[:n] = bt["cls"]
    if not np.all(np.isfinite(np.asarray(x[:n], np.float32))):
        raise ValueError(f"activation rows {bt['row0']}..{bt['row0'] + n - 1} contain NaN or inf; clean the store")
    return x, valid, fresh, seg, cls


def run_examples_pass(model, info: RowInfo, mesh, spec: Spec, lat, thr, *, B: int, stop: int, dedup: bool,
                      seed: int, counters: dict, block_rows: Optional[int], progress: bool, prefetch: int) -> dict:
    """Stream the rows [0, stop) through `fold_batch`; returns the final state on the host."""
    cfg = model[0]
    p_d, b_d, consts, state = device_inputs(model, mesh, spec, lat, thr)
    M, D, G = cfg.num_models, cfg.activation_dim, spec.max_sequences
    row_sh, x_sh = meshes.sharding(mesh, meshes.DATA), meshes.sharding(mesh, *meshes.batch_spec())
    bar = progress_bar(progress, stop, "examples pass")
    block = int(block_rows or max(16 * B, 1 << 16))
    gen = sequence_batches(info, B, G, stop, dedup, counters, max(block, B))
    for bt in stream.prefetch_iter(gen, prefetch):
        x, valid, fresh, seg, cls = padded_batch(bt, B, G, M, D)
        seg_start = bt["seg_start"].astype(np.int32)
        state = fold_batch(p_d, b_d, consts, state, jax.device_put(x, x_sh), jax.device_put(valid, row_sh),
                           jax.device_put(fresh, row_sh), jax.device_put(seg, row_sh), seg_start,
                           jax.device_put(cls, row_sh), np.int32(bt["row0"]), seed_word(seed), cfg=cfg, spec=spec,
                           mesh=mesh)
        if bar:
            bar.update(bt["n"])
    if bar:
        bar.close()
    return jax.device_get(state)


def collect_examples(model, acts, *, rows: Optional[dict] = None, latents=None, max_activation=None,
                     per_bucket: int = 100,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, before: int = 24, after: int = 8,
                     batch_size: int = 4096, max_sequences: int = 256, dedup: bool = True, seed: int = 0,
                     mesh=None, max_rows: Optional[int] = None, max_state_bytes: float = 4 * 2 ** 30,
                     max_output_bytes: float = 16 * 2 ** 30, fill_chunk: int = 2048, class_names: Optional[Sequence[str]] = None, block_rows: Optional[int] = None,
                     progress: bool = False, prefetch: int = 2) -> dict:
    """Collect the examples (see the package docstring). Returns a dict with "meta", "examples"
    (column arrays, one entry per example; windows (E, W)), "latents" (per-latent columns) —
    the input of `write_examples`.

    Args:
      model: CrossCoder, (cfg, params, buffers) or a path (reference dir, workdir, tied dir).
      acts: (N, M, D) array or an ActivationStore (per-row columns read from it).
      rows: per-row columns for an array source: token_ids, sequence_ids (contiguous per
        sequence), positions, dataset_ids, token_classes; missing: one sequence per row.
      latents: indices, a boolean mask, or a `decoder.select_latents` selector ("chat-only", ...);
        None = all.
      max_activation: (F,) per-latent max of the activation (e.g. latents.parquet's
        max_activation); None = computed in an extra encode-only pass.
      per_bucket: examples per bucket (the top bucket and each reservoir).
      fractions: increasing bucket edges as fractions of the max.
      before / after: window tokens before / after the max token.
      batch_size: rows per step (whole sequences; a sequence longer than this is an error).
      max_sequences: sequences per step at most (a static shape: G).
      dedup: skip sequences whose token ids repeat an earlier sequence's.
      max_state_bytes / max_output_bytes: refuse to start above these (device state per device /
        host memory of the finished examples).
      fill_chunk: examples per step of the window fill.
    """
    t0 = time.perf_counter()
    cfg, params, buffers = load_model(model)
    F = cfg.dict_size
    info = RowInfo(acts, rows)
    stop = rows_to_collect(info, max_rows)
    fractions = checked_fractions(fractions, per_bucket, before, after)
    lat = selected_latents((cfg, params, buffers), latents)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    B, G, n_lat = batch_layout(cfg, mesh, batch_size, max_sequences)

    max_source = "given" if max_activation is not None else "pass"
    above = max_source == "given" or fractions[-1] < 1.0
    ncls = len(class_names) if class_names is not None else (len(token_class_names()) if info.has("token_classes") else 0)
    spec = Spec(per_bucket=int(per_bucket), num_reservoirs=len(fractions) + int(above), before=int(before),
                after=int(after), max_sequences=G, num_classes=ncls)
    check_memory(cfg, spec, int(lat.size), n_lat, max_state_bytes, max_output_bytes)
    if max_activation is None:
        max_activation = max_activations((cfg, params, buffers), acts, batch_size=B, mesh=mesh, max_rows=stop,
                                         progress=progress)
    max_activation = np.asarray(max_activation, np.float64).reshape(-1)
    if max_activation.shape != (F,):
        raise ValueError(f"max_activation has {max_activation.size} entries; the crosscoder has {F} latents")

    counters = {"sequences": 0, "duplicates": 0}
    st = run_examples_pass((cfg, params, buffers), info, mesh, spec, lat,
                           bucket_thresholds(max_activation, lat, fractions, above), B=B, stop=stop, dedup=dedup,
                           seed=seed, counters=counters, block_rows=block_rows, progress=progress, prefetch=prefetch)
    buckets = bucket_table(fractions, above)
    meta = pass_meta(cfg, spec, buckets, fractions, num_latents=int(lat.size), seed=seed, dedup=dedup,
                     max_source=max_source, num_tokens=stop, counters=counters, batch_size=B, t0=t0)
    meta.update(source_meta(acts, class_names if class_names is not None else
                            (token_class_names() if ncls else None)))
    ex = finalize_examples((cfg, params, buffers), info, st, spec, lat, stop, fill_chunk, progress)
    lat_cols = latent_columns((cfg, params, buffers), st, spec, lat, max_activation, buckets, meta, stop)
    return {"meta": meta, "examples": ex, "latents": lat_cols}
