"""Ahead-of-time compilation of the real train step on a mesh, without data or execution.

    python -m jaxcoders.perf.aot --devices=16 --D=2304 --F=73728 --B=2048 --meshes=16x1,8x2,4x4,1x16 \\
        --archs=l1,batchtopk,tied --dtype=bfloat16

prints one JSON line per (arch, mesh): XLA's memory analysis of the compiled per-device program
(bytes: arguments, outputs, aliased, temporaries; total = arguments + outputs − aliased +
temporaries) and the compile time. The state is abstract (`jax.ShapeDtypeStruct`s carrying the
training shardings), so a Gemma-2-2B-sized step compiles on a laptop: with
`--xla_force_host_platform_device_count` set (this module sets it from --devices before jax
starts), the "devices" are CPU devices and the program is the one XLA:CPU would run. `tpu/capacity.py
--compiled` compares it with the planner's memory model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def abstract_train_state(cfg, tcfg, mesh):
    """A `TrainState` of `jax.ShapeDtypeStruct`s with the training shardings on `mesh`."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxcoders.core.params import default_buffers, init_params
    from jaxcoders.training.state import TrainState, train_state_specs
    from jaxcoders.training.optimizer import make_optimizer

    opt = make_optimizer(cfg, tcfg, tcfg.total_steps)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    F = cfg.dict_size
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(opt.init, params),
        buffers=jax.eval_shape(lambda: default_buffers(cfg)),
        tokens_since_fired_F=jax.ShapeDtypeStruct((F,), jnp.int32),
        steps_since_active_F=jax.ShapeDtypeStruct((F,), jnp.int32))
    specs = train_state_specs(opt, params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, s)),
                        state, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def compiled_step_memory(cfg, tcfg, mesh, batch_size: int) -> dict:
    """Compile `train.make_train_step(cfg, tcfg, mesh=mesh)` for a global batch of `batch_size`
    tokens and return XLA's per-device memory analysis (bytes) and the compile time (s)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from jaxcoders.training import sharding as shd
    from jaxcoders.training.step import make_train_step

    shd.check_shapes(cfg, batch_size, mesh)
    state = abstract_train_state(cfg, tcfg, mesh)
    x = jax.ShapeDtypeStruct((batch_size, cfg.num_models, cfg.activation_dim), jnp.float32,
                             sharding=NamedSharding(mesh, shd.batch_spec()))
    k = jax.ShapeDtypeStruct((), jnp.int32)
    t0 = time.perf_counter()
    compiled = make_train_step(cfg, tcfg, mesh=mesh).lower(state, x, k).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    out = {name: int(getattr(ma, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["compile_s"] = round(compile_s, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, required=True, help="fake CPU devices (the largest mesh)")
    p.add_argument("--M", type=int, default=2)
    p.add_argument("--D", type=int, required=True)
    p.add_argument("--F", type=int, required=True)
    p.add_argument("--B", type=int, required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--meshes", required=True, help="comma-separated DATAxLATENT, e.g. 16x1,4x4")
    p.add_argument("--archs", default="l1,batchtopk,tied")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    a = p.parse_args(argv)
    try:
        meshes = [tuple(int(v) for v in m.lower().split("x")) for m in a.meshes.split(",") if m.strip()]
        if any(len(m) != 2 or m[0] * m[1] > a.devices or min(m) < 1 for m in meshes):
            raise ValueError
    except ValueError:
        print(f"error: --meshes={a.meshes} must be DATAxLATENT pairs of at most --devices={a.devices} devices",
              file=sys.stderr)
        return 2
    if "jax" in sys.modules:
        print("error: jaxcoders.perf.aot must set the device count before jax is imported", file=sys.stderr)
        return 2
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={a.devices}").strip()
    import jax

    from jaxcoders.training import sharding as shd
    from jaxcoders.config import CrossCoderConfig, TrainConfig

    for arch in a.archs.split(","):
        cfg = CrossCoderConfig(a.M, a.D, a.F, architecture=arch, k=a.k if arch == "batchtopk" else None,
                               compute_dtype=a.dtype)
        tcfg = TrainConfig()
        for d, l in meshes:
            mesh = shd.make_mesh(d, l, devices=jax.devices()[: d * l])
            mem = compiled_step_memory(cfg, tcfg, mesh, a.B)
            print(json.dumps(dict(arch=arch, M=a.M, D=a.D, F=a.F, B=a.B, dtype=a.dtype, data=d, latent=l,
                                  jax_version=jax.__version__, **mem)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
