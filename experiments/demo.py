"""The built-in demo: train an L1 and a BatchTopK crosscoder on synthetic paired activations with
planted shared / chat-only / base-only features, and report what each crosscoder found.

    python experiments/demo.py --out demo_out          # what `make demo` runs

Writes `<out>/summary.md` (read this first), `<out>/summary.json`, and both crosscoders in the
reference (dictionary_learning) layout under `<out>/l1/` and `<out>/batchtopk/`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "demo_out", "Output directory.")
flags.DEFINE_integer("steps", 3000, "Training steps per crosscoder.")
flags.DEFINE_integer("batch_size", 512, "Tokens per batch.")
flags.DEFINE_integer("dict_size", 256, "Latents F.")
flags.DEFINE_integer("k", 4, "BatchTopK k.")
flags.DEFINE_float("l1_coefficient", 0.08, "L1 crosscoder sparsity coefficient mu.")
flags.DEFINE_float("lr", 2e-3, "Peak learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of the planted dictionary, data and initialisation.")


def relative_decoder_norm(w_dec_MFD):
    """Paper Δnorm (SPEC section 6): 1 = chat-only, 0 = base-only."""
    import numpy as np

    n = np.linalg.norm(np.asarray(w_dec_MFD, np.float64), axis=-1)
    nb, nc = n[0], n[1]
    return 0.5 * ((nc - nb) / np.maximum(np.maximum(nc, nb), 1e-12) + 1.0)


def summarize(name, model, planted, x_val):
    import numpy as np

    from jaxcoders.toy.synthetic import KINDS, recovery

    w_dec = np.asarray(model.params.w_dec_MFD)
    delta = relative_decoder_norm(w_dec)
    f = np.asarray(model.encode(x_val))
    f_any = f if f.ndim == 2 else f.max(axis=1)
    alive = (f_any > 0).any(axis=0)
    x_hat = np.asarray(model.decode(f))
    fve = [float(1 - np.var(x_val[:, m] - x_hat[:, m], axis=0).sum() / np.var(x_val[:, m], axis=0).sum())
           for m in range(x_val.shape[1])]
    rec = recovery(planted, w_dec)
    per_kind = {}
    for kind in KINDS:
        sel = planted.kinds == kind
        if not sel.any():
            continue
        best = rec["best_latent"][sel]
        per_kind[kind] = {
            "planted": int(sel.sum()),
            "recovered_cos>0.9": int((rec["max_cosine"][sel] > 0.9).sum()),
            "mean_max_cosine": float(rec["max_cosine"][sel].mean()),
            "mean_delta_norm_of_best_latent": float(delta[best].mean()),
        }
    return {
        "name": name,
        "alive_latents": int(alive.sum()),
        "l0": float((f_any > 0).sum(axis=1).mean()),
        "fve_base": fve[0],
        "fve_chat": fve[1],
        "chat_only_latents(delta>0.9)": int(((delta > 0.9) & alive).sum()),
        "base_only_latents(delta<0.1)": int(((delta < 0.1) & alive).sum()),
        "shared_latents(0.4<=delta<=0.6)": int(((delta >= 0.4) & (delta <= 0.6) & alive).sum()),
        "planted_features": per_kind,
    }


def main(argv):
    del argv
    import numpy as np
    from flax import nnx

    import jaxcoders
    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.crosscoder import CrossCoder
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    spec = SyntheticSpec(activation_dim=32, n_shared=48, n_chat_only=8, n_base_only=8, n_rotated=4, seed=FLAGS.seed)
    planted = make_dictionary(spec)
    B, T = FLAGS.batch_size, FLAGS.steps
    print(f"[1/3] planting {spec.n_features} features (48 shared, 8 chat-only, 8 base-only, 4 rotated) "
          f"in D={spec.activation_dim}; sampling {B * T:,} training tokens", flush=True)
    x_train, _ = planted.sample(B * T, seed=FLAGS.seed + 1)
    x_val, _ = planted.sample(8192, seed=FLAGS.seed + 2)
    batches = x_train.reshape(T, B, 2, spec.activation_dim)

    results = {}
    for step_no, (arch, kw, tkw) in enumerate([
        ("l1", dict(norm_init_scale=0.1), dict(l1_coefficient=FLAGS.l1_coefficient)),
        ("batchtopk", dict(k=FLAGS.k, norm_init_scale=1.0), dict(threshold_start_step=T // 4)),
    ], start=2):
        print(f"[{step_no}/3] training the {arch} crosscoder (F={FLAGS.dict_size}, {T} steps of {B} tokens)", flush=True)
        cfg = CrossCoderConfig(2, spec.activation_dim, FLAGS.dict_size, architecture=arch,
                               same_init_for_all_models=True, **kw)
        model = CrossCoder(cfg, rngs=nnx.Rngs(FLAGS.seed))
        tcfg = TrainConfig(lr=FLAGS.lr, warmup_steps=min(100, T // 10), total_steps=T, **tkw)
        trained, losses = jaxcoders.fit(model, batches, tcfg, progress=not os.environ.get("CI"))
        jaxcoders.save_reference(trained, out / arch)
        res = summarize(arch, trained, planted, x_val)
        res["final_loss"] = float(np.mean(losses[-50:]))
        results[arch] = res
    results["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(results, indent=2))

    lines = ["# jaxcoders demo: crosscoders on planted synthetic features", "",
             f"Planted: {planted.spec.n_features} features in D={spec.activation_dim} (48 shared, 8 chat-only, "
             "8 base-only, 4 rotated between models). Δnorm = relative decoder norm (1 = chat-only, 0 = base-only).", "",
             "| crosscoder | alive | L0 | FVE base | FVE chat | chat-only latents | base-only | shared | "
             "shared recovered | chat-only recovered | base-only recovered |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ("l1", "batchtopk"):
        r = results[arch]
        pf = r["planted_features"]
        rec = lambda k: f"{pf[k]['recovered_cos>0.9']}/{pf[k]['planted']}"  # noqa: E731
        lines.append(
            f"| {arch} | {r['alive_latents']} | {r['l0']:.1f} | {r['fve_base']:.3f} | {r['fve_chat']:.3f} | "
            f"{r['chat_only_latents(delta>0.9)']} | {r['base_only_latents(delta<0.1)']} | "
            f"{r['shared_latents(0.4<=delta<=0.6)']} | {rec('shared')} | {rec('chat_only')} | {rec('base_only')} |")
    lines += ["", "Recovered = some latent's decoder pair has cosine > 0.9 with the planted (base, chat) direction.",
              f"Exported (reference layout): {out / 'l1'}, {out / 'batchtopk'}. Took {results['seconds']} s."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
