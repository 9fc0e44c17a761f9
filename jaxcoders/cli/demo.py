"""The built-in demo: the whole crosscoder model-diffing pipeline on a real (tiny) base/chat model pair.

    python experiments/demo.py --out demo_out          # what `make demo` runs (< 10 min on 2 CPU cores)
    python experiments/demo.py --out demo_out --small  # the same pipeline at CI size (~2 min)
    python experiments/demo.py --synthetic --out demo_synth   # crosscoders on planted synthetic activations

Default: builds (or loads from ~/.cache/jaxcoders/demo_models) a base model pretrained on Python's
bundled documentation and a chat model fine-tuned from it with planted behaviours (a fixed greeting
after the assistant turn marker, a refusal after the trigger word "password"), extracts both models'
activations at a middle layer on text and chats into an ActivationStore, trains an L1 and a BatchTopK
crosscoder, runs Latent Scaling and the analyses, exports both crosscoders in the reference layout
(`<out>/l1`, `<out>/batchtopk`), evaluates them causally (interventions on fresh chats), collects
max-activating examples, writes one HTML report per crosscoder (`<out>/report/<arch>/report.html`),
the paper's figures and tables (`<out>/paper/paper.md`, `jaxcoders.paper`) and
`<out>/report/summary.md` (read this first). See
`jaxcoders/demo/pipeline.py`. Nothing touches a model hub.

`--synthetic`: the earlier demo on synthetic paired activations with planted shared / chat-only /
base-only features; writes `<out>/summary.md`, `<out>/summary.json`, `<out>/l1`, `<out>/batchtopk`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")  # the demo never touches a hub

from absl import flags  # noqa: E402

from jaxcoders.cli.common import run_app, user_errors  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "demo_out", "Output directory.")
flags.DEFINE_bool("synthetic", False, "Run the synthetic planted-feature demo instead of the model-pair pipeline.")
flags.DEFINE_bool("small", False, "Model-pair pipeline at CI size (tiny models, ~10k tokens, 256 latents).")
flags.DEFINE_string("models_dir", None, "Cache of built model pairs (default: $JAXCODERS_CACHE/demo_models, "
                    "else ~/.cache/jaxcoders/demo_models).")
flags.DEFINE_integer("layer", None, "Extract the residual stream after this block (default: num_layers // 2).")
flags.DEFINE_integer("tokens", None, "Training tokens per dataset (text, chat) to extract (default 40000).")
flags.DEFINE_integer("steps", None, "Training steps per crosscoder (default 1000; synthetic 3000).")
flags.DEFINE_integer("batch_size", None, "Tokens per batch (default 512).")
flags.DEFINE_integer("dict_size", None, "Latents F (default 1024; synthetic 256).")
flags.DEFINE_integer("k", None, "BatchTopK k (default 16; synthetic 4).")
flags.DEFINE_float("l1_coefficient", None, "L1 crosscoder sparsity coefficient mu (default 0.05; synthetic 0.08).")
flags.DEFINE_float("lr", None, "Peak learning rate (default 1e-3; synthetic 2e-3).")
flags.DEFINE_integer("eval_chats", None, "Fresh conversations of the causal evaluation (default 200; 0 skips it).")
flags.DEFINE_integer("seed", 0, "Seed of the data order and initialisation (synthetic: also of the planted dictionary).")
flags.DEFINE_bool("paper", True, "Stage 8: the paper's figures and tables on this output (<out>/paper/paper.md).")
flags.DEFINE_bool("progress", None, "Progress bars (default: on unless $CI is set or stderr is not a terminal).")


# what the demo writes into --out (both variants): a directory holding only these is a demo output
DEMO_NAMES = frozenset({"store", "runs", "l1", "batchtopk", "report", "paper", "cache", "summary.json", "summary.md",
                        "summary.png", "planted.png"})


def claim_demo_out(out: str) -> None:
    """--out must be new, empty, or a demo output (the demo replaces its store and trainer workdirs
    there): anything else is refused before a model is built, so nothing of the user's is deleted."""
    from jaxcoders.files import claim_output_dir

    path = Path(out)
    legacy = path.is_dir() and all(n in DEMO_NAMES or n.startswith(".") for n in os.listdir(path))
    claim_output_dir(out, "demo", overwrite=legacy)


def _opt(value, default):
    return default if value is None else value


def relative_decoder_norm(w_dec_MFD):
    """Paper Δnorm (docs/method.md §6): 1 = chat-only, 0 = base-only."""
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


def main_synthetic():
    import numpy as np
    from flax import nnx

    import jaxcoders
    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    spec = SyntheticSpec(activation_dim=32, n_shared=48, n_chat_only=8, n_base_only=8, n_rotated=4, seed=FLAGS.seed)
    planted = make_dictionary(spec)
    B, T = _opt(FLAGS.batch_size, 512), _opt(FLAGS.steps, 3000)
    dict_size, k, mu, lr = _opt(FLAGS.dict_size, 256), _opt(FLAGS.k, 4), _opt(FLAGS.l1_coefficient, 0.08), _opt(FLAGS.lr, 2e-3)
    print(f"[1/3] planting {spec.n_features} features (48 shared, 8 chat-only, 8 base-only, 4 rotated) "
          f"in D={spec.activation_dim}; sampling {B * T:,} training tokens", flush=True)
    x_train, _ = planted.sample(B * T, seed=FLAGS.seed + 1)
    x_val, _ = planted.sample(8192, seed=FLAGS.seed + 2)
    batches = x_train.reshape(T, B, 2, spec.activation_dim)

    results = {}
    for step_no, (arch, kw, tkw) in enumerate([
        ("l1", dict(norm_init_scale=0.1), dict(l1_coefficient=mu)),
        ("batchtopk", dict(k=k, norm_init_scale=1.0), dict(threshold_start_step=T // 4)),
    ], start=2):
        print(f"[{step_no}/3] training the {arch} crosscoder (F={dict_size}, {T} steps of {B} tokens)", flush=True)
        cfg = CrossCoderConfig(2, spec.activation_dim, dict_size, architecture=arch,
                               same_init_for_all_models=True, **kw)
        model = CrossCoder(cfg, rngs=nnx.Rngs(FLAGS.seed))
        tcfg = TrainConfig(lr=lr, warmup_steps=min(100, T // 10), total_steps=T, **tkw)
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


@user_errors
def main(argv):
    del argv
    claim_demo_out(FLAGS.out)
    if FLAGS.synthetic:
        return main_synthetic()
    from jaxcoders.demo.pipeline import DemoConfig, run_demo

    progress = FLAGS.progress if FLAGS.progress is not None else (not os.environ.get("CI") and sys.stderr.isatty())
    kw = dict(out=FLAGS.out, models_dir=FLAGS.models_dir, layer=FLAGS.layer, seed=FLAGS.seed, progress=progress,
              paper=FLAGS.paper)
    for name, flag in (("text_tokens", FLAGS.tokens), ("chat_tokens", FLAGS.tokens), ("steps", FLAGS.steps),
                       ("batch_size", FLAGS.batch_size), ("dict_size", FLAGS.dict_size), ("k", FLAGS.k),
                       ("l1_coefficient", FLAGS.l1_coefficient), ("lr", FLAGS.lr), ("eval_chats", FLAGS.eval_chats)):
        if flag is not None:
            kw[name] = flag
    cfg = DemoConfig.small(**kw) if FLAGS.small else DemoConfig(**kw)
    run_demo(cfg)  # its log ends with where to look


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
