"""The encode-only max pass: the per-latent max (F,) of the ranking activation over the rows, the
basis of the bucket edges when no max is supplied to `collect_examples`."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcoders.core.params import CrossCoderParams
from jaxcoders.analysis import mesh as meshes
from jaxcoders.analysis import stream
from jaxcoders.analysis.examples.channels import channel_scales
from jaxcoders.analysis.examples.model import batch_codes, load_model
from jaxcoders.analysis.examples.progress import progress_bar
from jaxcoders.analysis.examples.step import latent_last


@functools.partial(jax.jit, static_argnames=("cfg",))
def _max_step(params, buffers, scale_CF, m_F, x_BMD, valid_B, *, cfg):
    codes = batch_codes(cfg, params, buffers, x_BMD.astype(jnp.float32)) * valid_B[:, None, None]
    return jnp.maximum(m_F, jnp.max(jnp.einsum("bcf,cf->bf", codes, scale_CF, precision=jax.lax.Precision.HIGHEST), axis=0))


def max_activations(model, acts, *, batch_size: int = 4096, mesh=None, max_rows: Optional[int] = None,
                    progress: bool = False) -> np.ndarray:
    """Per-latent max of the ranking activation over the rows (F,) float64: an encode-only pass."""
    cfg, params, buffers = load_model(model)
    mesh = mesh if mesh is not None else meshes.make_mesh()
    n_data = meshes.axis_size(mesh, meshes.DATA)
    B = -(-int(batch_size) // n_data) * n_data
    p_d = jax.device_put(CrossCoderParams(*(np.asarray(a, np.float32) for a in params)),
                         jax.tree.map(lambda s: meshes.sharding(mesh, *s), meshes.param_specs()))
    b_d = jax.device_put(buffers, meshes.sharding(mesh))
    scales = channel_scales(cfg, params).astype(np.float32)
    sc = jax.device_put(scales, meshes.sharding(mesh, *latent_last(scales.shape, mesh)))
    m = jax.device_put(np.zeros(cfg.dict_size, np.float32), meshes.sharding(mesh, *latent_last((cfg.dict_size,), mesh)))
    bar = progress_bar(progress, stream.num_rows(acts) if max_rows is None else max_rows, "max pass")
    for x, _ in stream.iter_batches(acts, B, max_rows=max_rows):
        n = len(x)
        valid = np.zeros(B, np.float32)
        valid[:n] = 1
        if n < B:
            x = np.concatenate([x, np.zeros((B - n,) + x.shape[1:], x.dtype)])
        m = _max_step(p_d, b_d, sc, m, jax.device_put(x, meshes.sharding(mesh, *meshes.batch_spec())),
                      jax.device_put(valid, meshes.sharding(mesh, meshes.DATA)), cfg=cfg)
        if bar:
            bar.update(n)
    if bar:
        bar.close()
    return np.asarray(jax.device_get(m), np.float64)
