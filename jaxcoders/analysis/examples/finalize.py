"""The examples table from the finished pass state: the kept entries (E,) sorted by (latent, bucket
id, activation desc, row) with their rank in the bucket, and their windows (E, W) — token ids,
sequence / position / dataset / class of the max token, and per output channel the codes re-encoded
from the rows (read in row order, a chunk of examples at a time)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams
from jaxcoders.analysis.examples.channels import channel_scales, channel_values, output_channels
from jaxcoders.analysis.examples.model import window_codes, window_codes_dense
from jaxcoders.analysis.examples.progress import progress_bar
from jaxcoders.analysis.examples.rows import RowInfo
from jaxcoders.analysis.examples.spec import INT_MIN, ROW_COLUMNS, Spec


def kept_entries(st: dict, spec: Spec, lat: np.ndarray):
    """(latent int32-like, bucket int8 file id, activation float32, row int64), each (E,), of the kept
    entries of the host state `st`, sorted by (latent, bucket id, activation desc, row)."""
    R = spec.num_reservoirs
    g, k, s_idx = np.nonzero(np.asarray(st["score"]) != INT_MIN)
    bucket = np.where(g == 0, 0, R + 1 - g).astype(np.int8)  # group 1 + r (ascending) -> file id R - r
    value = np.asarray(st["value"])[g, k, s_idx].astype(np.float32)
    row = np.asarray(st["row"])[g, k, s_idx].astype(np.int64)
    order = np.lexsort((row, -value, bucket, lat[s_idx]))
    return lat[s_idx[order]], bucket[order], value[order], row[order]


def bucket_ranks(latent: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    """(E,) int16 rank of each sorted entry within its (latent, bucket): 0 = largest activation."""
    E = latent.size
    rank = np.zeros(E, np.int16)
    if E:
        grp = np.r_[True, (latent[1:] != latent[:-1]) | (bucket[1:] != bucket[:-1])]
        starts = np.flatnonzero(grp)
        rank = (np.arange(E) - np.repeat(starts, np.diff(np.r_[starts, E]))).astype(np.int16)
    return rank


def _lookup(look: dict, uniq: np.ndarray, name: str, rows) -> np.ndarray:
    """Column `name` at `rows` from its values `look[name]` at the sorted distinct rows `uniq`."""
    return np.asarray(look[name])[np.minimum(np.searchsorted(uniq, rows), uniq.size - 1)]


def _chunk_codes(cfg, devices, x_u, uniq, wrows, latent_n, chunk: int, W: int) -> np.ndarray:
    """Codes (n, C, W) of the chunk's n windows wrows (n, W) of latents latent_n (n,) from the rows
    x_u (U, M, D) at `uniq`; shapes padded to powers of two (few compiled shapes)."""
    p_d, b_d = devices
    n = latent_n.size
    u_pad = 1 << max(int(uniq.size - 1).bit_length(), 4)  # few compiled shapes
    x_u = np.concatenate([x_u, np.zeros((u_pad - uniq.size,) + x_u.shape[1:], x_u.dtype)])
    widx = np.zeros((chunk, W), np.int32)
    widx[:n] = np.minimum(np.searchsorted(uniq, wrows), uniq.size - 1)
    lat_u, pos = np.unique(latent_n, return_inverse=True)
    l_pad = 1 << max(int(lat_u.size - 1).bit_length(), 4)
    if u_pad * l_pad <= 4 * chunk * W:  # overlapping windows: encode the distinct rows × latents densely
        lat_l = np.zeros(l_pad, np.int32)
        lat_l[:lat_u.size] = lat_u
        pos_e = np.zeros(chunk, np.int32)
        pos_e[:n] = pos.reshape(-1)
        codes = window_codes_dense(p_d, b_d, x_u, widx, lat_l, pos_e, cfg=cfg)
    else:
        lat_e = np.zeros(chunk, np.int32)
        lat_e[:n] = latent_n
        codes = window_codes(p_d, b_d, x_u, widx, lat_e, cfg=cfg)
    return np.asarray(codes)[:n]


def _fill_chunk(model, devices, info: RowInfo, idx, latent, row, offsets, N: int, chunk: int, norms_scales,
                out: dict, chans: dict) -> None:
    """Fill the columns `out` and window channels `chans` of the examples `idx` (row-sorted)."""
    cfg, params, _ = model
    wrows = row[idx, None] + offsets[None]
    inside = (wrows >= 0) & (wrows < N)
    uniq = np.unique(np.r_[wrows[inside], row[idx]])
    look = {name: info.get(name, uniq) for name in ROW_COLUMNS if info.has(name) or name == "sequence_ids"}
    seq_c = _lookup(look, uniq, "sequence_ids", row[idx])
    same = inside & (_lookup(look, uniq, "sequence_ids", wrows) == seq_c[:, None])
    x_u = info.read_rows(uniq)  # the rows this chunk's windows need, read once, gathered on device
    codes = _chunk_codes(cfg, devices, x_u, uniq, wrows, latent[idx], chunk, offsets.size) * same[:, None]
    for key, v in channel_values(cfg, params, codes, latent[idx], norms_scales).items():
        chans[f"act_{key}"][idx] = v
    out["sequence_id"][idx] = seq_c
    for name, key in (("positions", "position"), ("dataset_ids", "dataset_id"), ("token_classes", "token_class")):
        if name in look:
            out[key][idx] = _lookup(look, uniq, name, row[idx])
    tok = _lookup(look, uniq, "token_ids", wrows) if "token_ids" in look else np.full(wrows.shape, -2)  # -2: id unknown
    out["token_ids"][idx] = np.where(same, tok, -1)


def finalize_examples(model, info: RowInfo, st: dict, spec: Spec, lat: np.ndarray, N: int, chunk: int,
                      progress: bool = False) -> dict:
    """Host side: one entry per kept example, sorted by (latent, bucket id, activation desc, row); the
    window codes are recomputed from the rows (read in row order, `chunk` examples at a time)."""
    cfg, params, buffers = model
    latent, bucket, value, row = kept_entries(st, spec, lat)
    E, W = latent.size, spec.window
    rank = bucket_ranks(latent, bucket)
    offsets = np.arange(-spec.before, spec.after + 1)
    out = {"sequence_id": np.full(E, -1, np.int64), "position": np.full(E, -1, np.int32),
           "dataset_id": np.full(E, -1, np.int16), "token_class": np.full(E, -1, np.int16),
           "token_ids": np.full((E, W), -1, np.int32)}
    chans = {f"act_{c}": np.zeros((E, W), np.float32) for c in output_channels(cfg)}
    devices = (CrossCoderParams(*(jnp.asarray(a, jnp.float32) for a in params)),
               CrossCoderBuffers(*(jnp.asarray(a) for a in buffers)))
    by_row = np.argsort(row, kind="stable")
    norms_scales = (np.linalg.norm(np.asarray(params.w_dec_MFD, np.float64), axis=-1), channel_scales(cfg, params))
    M, D = cfg.num_models, cfg.activation_dim
    chunk = int(max(16, min(chunk, 2 ** 28 // (W * M * D * 4))))  # device temporaries <= 256 MiB
    bar = progress_bar(progress, E, "windows") if E else None
    for a in range(0, E, chunk):
        idx = by_row[a:a + chunk]
        _fill_chunk(model, devices, info, idx, latent, row, offsets, N, chunk, norms_scales, out, chans)
        if bar:
            bar.update(idx.size)
    if bar:
        bar.close()
    return {"latent": latent.astype(np.int32), "bucket": bucket, "rank": rank, "activation": value, "row": row,
            **out, **chans}
