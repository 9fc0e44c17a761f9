"""A local interactive dashboard (Streamlit) of a crosscoder: latent browser, latent pages, prompts, steering.

    python experiments/dashboard.py --demo_out=demo_out --port=8501

    python experiments/dashboard.py --crosscoder=runs/gemma2-btk --base_model=google/gemma-2-2b \\
      --chat_model=google/gemma-2-2b-it --layer=13 --analysis=analysis_out --examples=examples_out

Then open http://127.0.0.1:<port>/ (the server binds --host, 127.0.0.1 by default: this machine
only). `--demo_out` takes everything (models, layer, crosscoder, analysis, examples) from an
`experiments/demo.py` output (`--arch` picks its crosscoder); flags given as well override it.
`--analysis` is the output of experiments/analyze.py (latents.parquet), `--examples` the output of
experiments/collect_examples.py (examples.json); both may be the `<out>` directory or its
`<out>/<crosscoder>` subdirectory. Without them the latent browser shows the decoder's columns.

The inputs are checked before the server starts (configs only: the layer exists, the crosscoder's
width D matches both models, the directories hold their files, the port is free); a problem is one
`error:` line and exit status 2. `--dry_run` checks and prints the server's command line without
starting it. docs/dashboard.md describes the panels.
"""
from __future__ import annotations

import os
import shlex
import sys

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
LOOPBACK = ("127.0.0.1", "localhost", "::1")
flags.DEFINE_string("crosscoder", None, "Crosscoder: reference directory, training workdir, gs://..., or hub repo.")
flags.DEFINE_string("base_model", None, "Base model: hub name or local directory.")
flags.DEFINE_string("chat_model", None, "Chat model: hub name or local directory.")
flags.DEFINE_integer("layer", None, "Block L (0-indexed) the crosscoder reads: residual after it = HF hidden_states[L+1].")
flags.DEFINE_string("analysis", None, "Output of experiments/analyze.py (<out> or <out>/<crosscoder>: latents.parquet).")
flags.DEFINE_string("examples", None, "Output of experiments/collect_examples.py (<out> or <out>/<crosscoder>).")
flags.DEFINE_string("demo_out", None, "An experiments/demo.py output directory: takes everything from it.")
flags.DEFINE_string("arch", None, "With --demo_out: which crosscoder (l1, batchtopk; default: most surviving "
                    "chat-only latents).")
flags.DEFINE_integer("port", 8501, "TCP port to serve on.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it).")
flags.DEFINE_string("device", "auto", "torch device of the models: auto, cpu, cuda, ...")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the models run in.")
flags.DEFINE_integer("max_len", 256, "Prompts are cut to this many tokens.")
flags.DEFINE_integer("max_new_tokens", 64, "The longest steering generation a reader may ask for.")
flags.DEFINE_string("title", None, "Title shown in the sidebar (default: the crosscoder's name).")
flags.DEFINE_bool("dry_run", False, "Check the inputs and print the server's command line; do not serve.")


def build_spec():
    """The DashboardSpec of the flags (`--demo_out` first, explicit flags over it)."""
    from jaxcoders.dashboard.inputs import DashboardError, DashboardSpec, spec_from_demo

    explicit = {k: FLAGS[k].value for k in ("crosscoder", "base_model", "chat_model", "layer", "analysis",
                                             "examples", "title") if FLAGS[k].present}
    common = dict(device=FLAGS.device, model_dtype=FLAGS.model_dtype, max_len=FLAGS.max_len,
                  max_new_tokens=FLAGS.max_new_tokens)
    if FLAGS.demo_out:
        return spec_from_demo(FLAGS.demo_out, FLAGS.arch, **explicit, **common)
    if FLAGS.arch:
        raise DashboardError("--arch needs --demo_out")
    missing = [f"--{k}" for k in ("crosscoder", "base_model", "chat_model", "layer") if k not in explicit]
    if missing:
        raise DashboardError(f"missing {', '.join(missing)}; give them (or --demo_out=<experiments/demo.py output>)")
    return DashboardSpec(**explicit, **common)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from jaxcoders.dashboard import inputs, server

    spec = build_spec()
    inputs.check_port(FLAGS.port, FLAGS.host)
    spec = inputs.resolved(spec, inputs.check_spec(spec))
    print(f"dashboard of {spec.crosscoder} (layer {spec.layer}; base {spec.base_model}, chat {spec.chat_model})")
    if FLAGS.host not in LOOPBACK:
        print(f"warning: --host={FLAGS.host} lets other machines open this dashboard: it has no login, and anyone "
              "who reaches it can run the models on their own prompts", file=sys.stderr)
    if FLAGS.dry_run:
        print("server command: " + " ".join(shlex.quote(a) for a in server.streamlit_command(FLAGS.port, FLAGS.host)))
        print(f"{inputs.SPEC_ENV}={shlex.quote(spec.to_json())}")
        print(f"would serve on {server.url(FLAGS.port, FLAGS.host)}")
        return
    print(f"serving on {server.url(FLAGS.port, FLAGS.host)}  (Ctrl-C stops it)", flush=True)
    server.serve(spec, FLAGS.port, FLAGS.host)


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
