"""Sections on the train step: the selection (bit-exactness and timing), each train-step
configuration (throughput, memory, profile) and the equivalence checks (sparse = dense, bf16 within
tolerance, meshed = plain)."""
from __future__ import annotations

import time

from jaxcoders.perf.accelerator.measure import (
    compiled_bytes,
    device_peak_bytes,
    median,
    rel_error,
    time_calls,
    top_device_ops,
)
from jaxcoders.perf.accelerator.plan import BF16_TOLERANCE, SPARSE_TOLERANCE, Size
from jaxcoders.perf.accelerator.records import Recorder


def scores_for(kind: str, B: int, F: int, seed: int = 0):
    """ReLU(normal) scores, or 17 levels in [0, 1] (heavy ties straddling the cut)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(seed)
    if kind == "relu":
        return jax.nn.relu(jax.random.normal(key, (B, F), jnp.float32))
    return jnp.round(16 * jax.random.uniform(key, (B, F), jnp.float32)) / 16


def section_selection(size: Size, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp

    from jaxcoders.core.selection.exact import METHODS, batch_topk_mask
    from jaxcoders.core.selection.candidates import select_entries

    B, F, k = size.B, size.F, size.k

    def entries_mask(s, k, method, k_cap=None):
        b, j, valid = select_entries(s, k, method=method, k_cap=k_cap)
        return jnp.zeros((B, F), bool).at[b, j].max(valid)

    whole = {m: jax.jit(lambda s, m=m: batch_topk_mask(s, k, method=m)) for m in METHODS}
    cand = {m: jax.jit(lambda s, m=m: entries_mask(s, k, m)) for m in METHODS}
    traced = {m: jax.jit(lambda s, kt, m=m: batch_topk_mask(s, kt, k_cap=2 * k, method=m)) for m in METHODS}
    same = jax.jit(lambda a, b: (jnp.sum(a != b), jnp.sum(a)))
    for kind in ("relu", "levels"):
        s = scores_for(kind, B, F)
        ref = whole["topk"](s)
        jax.block_until_ready(ref)
        for m in METHODS:
            for impl, fn, args in (("batch_topk_mask", whole[m], (s,)), ("select_entries", cand[m], (s,)),
                                   ("batch_topk_mask_traced_k", traced[m], (s, jnp.int32(k)))):
                try:
                    diff, n = (int(v) for v in same(fn(*args), ref))
                    rec.check(f"selection {impl} {m} == lax.top_k mask ({kind} scores)", diff == 0 and n == k * B,
                              B=B, F=F, k=k, scores=kind, method=m, implementation=impl, differing_entries=diff,
                              kept=n, expected_kept=k * B)
                except Exception as e:  # noqa: BLE001 - one method failing must not hide the others
                    rec.check(f"selection {impl} {m} == lax.top_k mask ({kind} scores)", False, method=m,
                              implementation=impl, scores=kind, error=error_line(e))
    s = scores_for("relu", B, F, seed=1)
    for m in METHODS:
        for impl, fn in (("batch_topk_mask", whole[m]), ("select_entries", cand[m])):
            try:
                ts = time_calls(fn, s, reps=5)
                rec("selection_time", B=B, F=F, k=k, method=m, implementation=impl,
                    ms_median=round(1e3 * median(ts), 3), ms_min=round(1e3 * min(ts), 3))
            except Exception as e:  # noqa: BLE001
                rec("error", what=f"selection timing {impl} {m}", error=error_line(e))


def step_setup(size: Size, spec: dict, seed: int = 0):
    """(cfg, tcfg, path, state, x, k_t, n_dead) of one configuration at the size's shapes, imitating
    late training: warm-up over, theta updated, 5 % of BatchTopK latents dead (auxk active)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.sparse_batchtopk import decoder_mode
    from jaxcoders.training.state import init_train_state

    arch = spec["arch"]
    btk = arch == "batchtopk"
    k = spec.get("k", size.k) if btk else None
    cfg = CrossCoderConfig(2, spec.get("D", size.D), spec.get("F", size.F), architecture=arch, k=k,
                           compute_dtype=spec["dtype"], norm_init_scale=1.0 if btk else None)
    tcfg = TrainConfig(warmup_steps=0, threshold_start_step=0, selection_method=spec.get("selection", "topk"),
                       decoder_mode=spec.get("decoder_mode", "dense"))
    B = spec.get("B", size.B)
    path = decoder_mode(cfg, tcfg, B) if btk else "dense"
    state = init_train_state(CrossCoder(cfg, rngs=nnx.Rngs(seed)), tcfg)
    key = jax.random.key(seed + 1)
    n_dead = 0
    if btk:
        n_dead = int(round(0.05 * cfg.dict_size))
        dead = jax.random.permutation(key, cfg.dict_size)[:n_dead]
        state = state._replace(
            params=state.params._replace(b_enc_F=state.params.b_enc_F.at[dead].set(-1e4)),  # stays dead
            tokens_since_fired_F=state.tokens_since_fired_F.at[dead].set(tcfg.dead_tokens_threshold))
    x = jax.random.normal(jax.random.fold_in(key, 1), (B, 2, cfg.activation_dim), jnp.float32)
    return cfg, tcfg, path, state, x, jnp.asarray(k or 0, jnp.int32), n_dead


def section_step(size: Size, spec: dict, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcoders.perf.flops import dense_flops, executed_flops
    from jaxcoders.training.step import make_train_step

    cfg, tcfg, path, state, x, k_t, n_dead = step_setup(size, spec)
    M, D, F, B = cfg.num_models, cfg.activation_dim, cfg.dict_size, x.shape[0]
    step = make_train_step(cfg, tcfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, k_t).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, metrics = compiled(state, x, k_t)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(size.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x, k_t)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    peak_step = device_peak_bytes()
    # the encoder forward alone, (B, M·D) @ (M·D, F) in the step's dtype
    dt = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    prec = None if cfg.compute_dtype == "bfloat16" else jax.lax.Precision.HIGHEST
    w = state.params.w_enc_MDF.reshape(M * D, F).astype(dt)
    xb = x.reshape(B, M * D).astype(dt)
    del state
    enc = jax.jit(lambda a, b: jnp.dot(a, b, precision=prec, preferred_element_type=jnp.float32))
    enc_s = median(time_calls(enc, xb, w, reps=5, warmup=2))
    med = median(times)
    fd = dense_flops(cfg.architecture, M, D, F, B)
    fe = executed_flops(cfg.architecture, path, M, D, F, B, cfg.k, n_dead, tcfg.top_k_aux or D // 2)
    rec("step", arch=cfg.architecture, dtype=cfg.compute_dtype, decoder_mode=tcfg.decoder_mode, decoder_path=path,
        selection=tcfg.selection_method if cfg.is_batchtopk else None, k=cfg.k if cfg.is_batchtopk else None,
        M=M, D=D, F=F, B=B, num_dead=int(metrics.get("num_dead", 0)), steps=len(times),
        ms_per_step=round(1e3 * med, 3), ms_per_step_min=round(1e3 * min(times), 3),
        ms_per_step_max=round(1e3 * max(times), 3), tokens_per_s=round(B / med, 1),
        flops_dense=fd, flops_executed=fe, achieved_tflops=round(fe / med / 1e12, 3),
        dense_equivalent_tflops=round(fd / med / 1e12, 3),
        encoder_forward_ms=round(1e3 * enc_s, 3), encoder_forward_tflops=round(2.0 * B * M * D * F / enc_s / 1e12, 3),
        step_over_encoder_forward=round(med / enc_s, 3), compile_s=round(compile_s, 2),
        compiled_memory_bytes=compiled_bytes(compiled), device_peak_bytes=peak_step,
        loss=metrics.get("loss"), loss_finite=bool(np.isfinite(metrics.get("loss", np.nan))))
    if spec.get("profile"):
        hlo = rec.path.parent / f"hlo_{cfg.architecture}_{cfg.compute_dtype}_{path}.txt"
        hlo.write_text(compiled.as_text())  # the op names of the profile below refer to this
        _, _, _, state, _, _, _ = step_setup(size, spec)
        holder = [state]

        def run():
            holder[0], m = compiled(holder[0], x, k_t)
            jax.block_until_ready(m)

        run()
        ops = top_device_ops(run)
        rec("profile", arch=cfg.architecture, dtype=cfg.compute_dtype, decoder_path=path,
            selection=tcfg.selection_method if cfg.is_batchtopk else None, ms_per_step=round(1e3 * med, 3),
            top_ops=ops, profiled_ms_total=round(sum(o["ms_per_call"] for o in ops), 3))


def section_equivalence(size: Size, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcoders.training import sharding as shd
    from jaxcoders.core.losses import batchtopk_loss, l1_loss
    from jaxcoders.core.selection.exact import batch_topk_mask, batch_topk_mask_sharded
    from jaxcoders.core.sparse_batchtopk import batchtopk_loss_sparse
    from jaxcoders.training.step import make_train_step
    from jaxcoders.training.state import shard_train_state

    D, F, B, k = size.eq
    base = dict(D=D, F=F, B=B, k=k)

    def loss_grads(loss_fn, cfg, tcfg, state, x, *extra):
        """(loss, aux), grads; `extra` arguments are closed over (k stays a static int)."""
        fn = jax.jit(lambda p, x: jax.value_and_grad(loss_fn, argnums=2, has_aux=True)(cfg, tcfg, p, x, *extra))
        return fn(state.params, x)

    # 1. sparse == dense (f32): loss, every gradient, and 3 train steps
    spec = dict(base, arch="batchtopk", dtype="float32", decoder_mode="dense")
    cfg, tcfg, _, state, x, k_t, _ = step_setup(size, spec)
    (ld, auxd), gd = loss_grads(batchtopk_loss, cfg, tcfg, state, x, state.tokens_since_fired_F, k)
    (ls_, auxs), gs = loss_grads(batchtopk_loss_sparse, cfg, tcfg, state, x, state.tokens_since_fired_F, k)
    g_err = {n: rel_error(a, b) for n, a, b in zip(gd._fields, gs, gd)}
    loss_err = abs(float(ls_) - float(ld)) / abs(float(ld))
    rec.check("sparse BatchTopK loss and gradients == dense (f32)",
              loss_err <= SPARSE_TOLERANCE["loss"] and max(g_err.values()) <= SPARSE_TOLERANCE["grad"],
              **base, loss_rel_err=loss_err, grad_rel_err=g_err, auxk_dense=float(auxd.auxk),
              auxk_sparse=float(auxs.auxk), num_dead=int(auxd.num_dead), tolerance=SPARSE_TOLERANCE)

    def train(mode, mesh=None, steps=3):
        c, t, _, st, _, kt, _ = step_setup(size, dict(spec, decoder_mode=mode))
        if mesh is not None:
            st = shard_train_state(st, c, t, mesh)
        step = make_train_step(c, t, mesh=mesh)
        xs = jax.random.normal(jax.random.key(7), (steps, B, 2, D))
        losses = []
        for i in range(steps):
            xi = xs[i] if mesh is None else shd.global_batch(np.asarray(xs[i]), mesh)
            st, m = step(st, xi, kt)
            losses.append(float(m["loss"]))
        return st, losses

    st_d, l_d = train("dense")
    st_s, l_s = train("sparse")
    p_err = {n: rel_error(a, b) for n, a, b in zip(st_d.params._fields, st_s.params, st_d.params)}
    rec.check("sparse BatchTopK train steps == dense (f32, 3 steps)",
              max(p_err.values()) <= SPARSE_TOLERANCE["params_after_steps"]
              and np.allclose(l_s, l_d, rtol=SPARSE_TOLERANCE["loss"] * 10),
              **base, losses_dense=l_d, losses_sparse=l_s, params_rel_err=p_err)

    # 2. one-device mesh == plain step (the meshed jit path: shardings, shard_map selection)
    mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
    for mode in ("dense", "sparse"):
        st_m, l_m = train(mode, mesh=mesh)
        ref_st, ref_l = (st_d, l_d) if mode == "dense" else (st_s, l_s)
        errs = {n: rel_error(a, b) for n, a, b in zip(ref_st.params._fields, st_m.params, ref_st.params)}
        bitwise = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(st_m.params, ref_st.params))
        rec.check(f"step on a 1x1 mesh == plain step (BatchTopK {mode}, 3 steps)", max(errs.values()) <= 1e-5,
                  **base, bitwise=bitwise, params_rel_err=errs, losses=l_m, losses_plain=ref_l,
                  note="one device: the meshed code path, not a multi-device partition (8 CPU devices in CI)")
    s = scores_for("levels", B, F, seed=3)
    ref = batch_topk_mask(s, k)
    for m in ("radix", "pallas", "topk"):
        try:
            got = batch_topk_mask_sharded(s, k, mesh=mesh, method=m)
            rec.check(f"sharded selection ({m}, 1x1 mesh) == batch_topk_mask", bool(jnp.array_equal(got, ref)),
                      B=B, F=F, k=k, method=m)
        except Exception as e:  # noqa: BLE001
            rec.check(f"sharded selection ({m}, 1x1 mesh) == batch_topk_mask", False, method=m, error=error_line(e))

    # 3. bf16 matmul inputs within BF16_TOLERANCE of f32 (L1 and BatchTopK, loss and gradients)
    for arch in ("l1", "batchtopk"):
        out = {}
        for dtype in ("float32", "bfloat16"):
            c, t, _, st, xx, _, _ = step_setup(size, dict(base, arch=arch, dtype=dtype))
            if arch == "l1":
                out[dtype] = loss_grads(l1_loss, c, t, st, xx, jnp.float32(t.l1_coefficient))
            else:
                out[dtype] = loss_grads(batchtopk_loss, c, t, st, xx, st.tokens_since_fired_F, k)
        (lf, _), gf = out["float32"]
        (lb, _), gb = out["bfloat16"]
        loss_err = abs(float(lb) - float(lf)) / abs(float(lf))
        g_err = {n: rel_error(a, b) for n, a, b in zip(gf._fields, gb, gf)}
        g_tol = BF16_TOLERANCE["grad_l1" if arch == "l1" else "grad_batchtopk"]
        rec.check(f"bf16 matmul inputs within tolerance of f32 ({arch})",
                  loss_err <= BF16_TOLERANCE["loss"] and max(g_err.values()) <= g_tol,
                  **base, arch=arch, loss_rel_err=loss_err, grad_rel_err=g_err,
                  tolerance={"loss": BF16_TOLERANCE["loss"], "grad": g_tol})


def error_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:500] if msg else ''}"
