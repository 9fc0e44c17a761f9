"""Planted ground-truth benchmark: L1, BatchTopK, tied (η sweep) and shared-latent crosscoders
trained on the same synthetic paired activations, compared on what was planted.

    python experiments/toy.py --out toy_out                 # ~3 minutes on 2 CPU cores
    python experiments/toy.py --out toy_out --steps=500     # quicker

Writes `<out>/toy_table.md` (also printed), `<out>/toy_results.json` and `<out>/toy_table.png`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "toy_out", "Output directory.")
flags.DEFINE_integer("steps", 2000, "Training steps per crosscoder.")
flags.DEFINE_integer("batch_size", 512, "Tokens per batch.")
flags.DEFINE_integer("dict_size", 256, "Latents (triples for the tied crosscoder).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_list("etas", ["1.0", "1.5", "2.0"], "η values of the tied crosscoder sweep.")
flags.DEFINE_float("noise", 0.02, "Noise std of the synthetic activations.")
flags.DEFINE_float("firing_prob", 0.04, "Firing probability of each planted feature.")

COLUMNS = ["crosscoder", "fve", "l0", "alive", "recovered_shared", "recovered_chat_only", "recovered_base_only",
           "recovered_rotated", "chat_only_latents", "true_chat_only", "false_chat_only", "false_flagged_by_ls",
           "true_kept_by_ls", "chat_corner_triples", "corr_concepts_in_one_triple"]


def planted_spec(seed: int, noise: float, firing_prob: float):
    from jaxcoders.toy.synthetic import SyntheticSpec

    return SyntheticSpec(activation_dim=32, n_shared=40, n_chat_only=6, n_base_only=6, n_rotated=4,
                         rotation_cosine=0.5, n_corr_pairs=4, corr_base=0.0, corr_chat=0.9,
                         firing_prob=firing_prob, noise_std=noise, seed=seed)


def run_all(out: Path, steps: int, batch_size: int, dict_size: int, seed: int, etas, noise: float,
            firing_prob: float, progress: bool = True) -> list[dict]:
    from flax import nnx

    import jaxcoders
    from jaxcoders.config import CrossCoderConfig, TrainConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.tied import tied_train_config
    from jaxcoders.toy.evaluation import evaluate_crosscoder
    from jaxcoders.toy.synthetic import make_dictionary

    planted = make_dictionary(planted_spec(seed, noise, firing_prob))
    D = planted.spec.activation_dim
    x, _ = planted.sample(steps * batch_size, seed=seed + 1)
    x_eval, _ = planted.sample(20000, seed=seed + 2)
    batches = x.reshape(steps, batch_size, 2, D)
    warm = min(100, steps // 10)
    runs = [
        ("L1 (μ=0.08)", CrossCoderConfig(2, D, dict_size, same_init_for_all_models=True, norm_init_scale=0.1),
         TrainConfig(lr=2e-3, warmup_steps=warm, l1_coefficient=0.08, total_steps=steps)),
        ("BatchTopK (k=4)", CrossCoderConfig(2, D, dict_size, architecture="batchtopk", k=4,
                                             same_init_for_all_models=True, norm_init_scale=1.0),
         TrainConfig(lr=2e-3, warmup_steps=warm, threshold_start_step=steps // 4, total_steps=steps)),
        ("L1 shared-latent (S=F/4)", CrossCoderConfig(2, D, dict_size, n_shared_latents=dict_size // 4,
                                                      same_init_for_all_models=True, norm_init_scale=0.1),
         TrainConfig(lr=2e-3, warmup_steps=warm, l1_coefficient=0.08, shared_l1_coefficient=0.04,
                     total_steps=steps)),
    ]
    for eta in etas:
        runs.append((f"tied (η={float(eta):g})", CrossCoderConfig(2, D, dict_size // 2, architecture="tied"),
                     tied_train_config(steps, lr=3e-3, l1_coefficient=0.3, eta=float(eta))))
    rows = []
    for name, mcfg, tcfg in runs:
        t0 = time.time()
        model = CrossCoder(mcfg, rngs=nnx.Rngs(seed))
        trained, _ = jaxcoders.fit(model, batches, tcfg, progress=progress)
        row = {"crosscoder": name, **evaluate_crosscoder(trained, planted, x_eval), "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_outputs(rows, out: Path, header: str):
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy_results.json").write_text(json.dumps(rows, indent=2))
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in COLUMNS) + " |")
    (out / "toy_table.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r["crosscoder"] for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        axes[0].bar(names, [r["true_chat_only"] for r in rows], label="true chat-only latents")
        axes[0].bar(names, [r["false_chat_only"] for r in rows], bottom=[r["true_chat_only"] for r in rows],
                    label="false chat-only latents (feature present in base)")
        axes[0].set_title("chat-only latents by ground truth")
        axes[0].legend(fontsize=8)
        axes[1].bar(names, [r["fve"] for r in rows])
        axes[1].set_title("fraction of variance explained")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30, labelsize=8)
        fig.tight_layout()
        fig.savefig(out / "toy_table.png", dpi=110)
        plt.close(fig)
    except ImportError:
        pass
    return "\n".join(lines)


@user_errors
def main(argv):
    del argv
    out = Path(FLAGS.out)
    rows = run_all(out, FLAGS.steps, FLAGS.batch_size, FLAGS.dict_size, FLAGS.seed, FLAGS.etas, FLAGS.noise,
                   FLAGS.firing_prob, progress=not os.environ.get("CI"))
    spec = planted_spec(FLAGS.seed, FLAGS.noise, FLAGS.firing_prob)
    header = (f"# Planted-feature benchmark ({FLAGS.steps} steps × {FLAGS.batch_size} tokens, D={spec.activation_dim}: "
              f"{spec.n_shared} shared, {spec.n_chat_only} chat-only, {spec.n_base_only} base-only, {spec.n_rotated} "
              f"rotated, {spec.n_corr_pairs} correlation-shifted pairs; noise {spec.noise_std}, p={spec.firing_prob})")
    print(write_outputs(rows, out, header))


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
