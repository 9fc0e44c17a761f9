r"""Analyse crosscoders: decoder metrics, usage statistics and Latent Scaling, one table each.

    python experiments/analyze.py \
        --crosscoder=tests/fixtures/reference/l1_crosscoder/model \
        --acts=tests/fixtures/reference/l1_crosscoder/latent_scaling.npz --out=analysis_out

`--crosscoder` takes a reference directory or a training workdir (its export/ or final/), or
several comma-separated; activations come from `--store=<ActivationStore url>` or
`--acts=<(N,M,D) .npy | .npz with x>`. Per crosscoder, `<out>/<name>/` gets latents.parquet (every
per-latent column), summary.json and PNG plots; one summary line per crosscoder is printed.
See docs/analysis.md for the columns.
"""
from __future__ import annotations

import json

from absl import flags

from jaxcoders.cli.common import run_app, user_errors
from jaxcoders.files import claim_output_dir

FLAGS = flags.FLAGS
flags.DEFINE_string("crosscoder", None, "Reference directory or workdir (export/ or final/); comma-separated for several.")
flags.DEFINE_string("store", None, "ActivationStore url.")
flags.DEFINE_string("acts", None, "(N, M, D) .npy file, or .npz holding x, instead of --store.")
flags.DEFINE_string("labels", None, "Optional (N,) int .npy of token classes (jaxcoders.data.store.TokenClass ids: "
                    "0 text, 1 bos, 2 template, 3 system, 4 user, 5 assistant, 6 other_role).")
flags.DEFINE_string("out", "analysis_out", "Output directory (one subdirectory per crosscoder).")
flags.DEFINE_integer("batch_size", 4096, "Tokens per jitted step.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Arithmetic of the streaming pass.")
flags.DEFINE_integer("max_tokens", None, "Analyse only the first rows of the store.")
flags.DEFINE_bool("latent_scaling", True, "Run Latent Scaling.")
flags.DEFINE_bool("usage", True, "Run the usage statistics (frequency, activations, FVE, L0, per-class).")
flags.DEFINE_string("latents", "all", "Latents probed by Latent Scaling: all, chat-only, base-only, exclusive, "
                    "shared, or comma-separated indices.")
flags.DEFINE_bool("mirror", True, "Also probe along the base decoder row (base-only latents).")
flags.DEFINE_bool("nearest", True, "Nearest-other-latent decoder cosines (F^2 D work per pair).")
flags.DEFINE_bool("plots", True, "Write PNG plots.")
flags.DEFINE_integer("mesh_latent", 1, "Devices on the mesh's latent axis (the rest shard tokens).")
flags.DEFINE_bool("progress", True, "Progress bar.")
flags.DEFINE_bool("overwrite", False, "Write into --out although it holds files that are not an analysis output "
                  "(nothing there is deleted).")
flags.mark_flag_as_required("crosscoder")


@user_errors
def main(argv):
    del argv
    from jaxcoders.analysis import inputs as cli
    from jaxcoders.analysis import tables
    from jaxcoders.io.remote import local_output, shown

    claim_output_dir(FLAGS.out, "analysis", overwrite=FLAGS.overwrite)
    acts, labels, classes = (None, {}, {})
    if FLAGS.store or FLAGS.acts:
        acts, labels, classes = cli.open_activations(FLAGS.store, FLAGS.acts, FLAGS.labels)
    mesh = cli.mesh_from_flags(FLAGS.mesh_latent)
    for path in [p for p in FLAGS.crosscoder.split(",") if p.strip()]:
        name = cli.crosscoder_name(path)
        table, summary = tables.analyze(
            path, acts, batch_size=FLAGS.batch_size, latent_scaling=FLAGS.latent_scaling, usage=FLAGS.usage,
            latents=FLAGS.latents, mirror=FLAGS.mirror, labels=labels or None, label_classes=classes,
            dtype=FLAGS.dtype, mesh=mesh, max_rows=FLAGS.max_tokens, nearest=FLAGS.nearest,
            progress=FLAGS.progress)
        summary.update(crosscoder=str(path), store=FLAGS.store, acts=FLAGS.acts)
        with local_output(FLAGS.out) as out:  # gs:// alike: written locally, uploaded at the end
            paths = tables.write_outputs(table, summary, out / name, plots=FLAGS.plots)
            print(tables.summary_line(summary, name))
            print(json.dumps({k: shown(v, out, FLAGS.out) for k, v in paths.items()}))


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
