r"""Collect max-activating examples per latent in activation-quantile buckets (for report.py).

    python experiments/collect_examples.py --crosscoder=runs/btk --store=gs://bucket/acts/gemma2-l13-val \
        --out=analysis_out --latents=exclusive

Per crosscoder, `<out>/<name>/` gets examples.parquet (one row per example: token ids and per-token
activations of a window around the max token), example_latents.parquet (per latent: bucket
populations, usage counts, decoder columns) and examples.json (format, buckets, channels); see
`jaxcoders/analysis/examples/files.py` for the format. Buckets: the top `--per_bucket` sequences,
and `--per_bucket` sequences sampled uniformly (without replacement, duplicates skipped) from each range
(f_{i-1}·max, f_i·max] of `--fractions` (reference: 0.25,0.5,0.75,0.95,1.0 and 100 per bucket).

The bucket edges need each latent's max activation. With `--max_activation_from=auto` (default)
the `max_activation` column of `<out>/<name>/latents.parquet` (written by experiments/analyze.py
over the same rows) is used and the examples take one pass; otherwise an encode-only max pass runs
first. `--crosscoder` also takes a tied crosscoder directory (cfg.json + model.safetensors).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors
from jaxcoders.files import claim_output_dir

FLAGS = flags.FLAGS
log = logging.getLogger("jaxcoders.cli.collect_examples")
flags.DEFINE_string("crosscoder", None, "Reference directory, workdir (export/ or final/) or tied crosscoder "
                    "directory; comma-separated for several.")
flags.DEFINE_string("store", None, "ActivationStore url.")
flags.DEFINE_string("acts", None, "(N, M, D) .npy file, or .npz holding x, instead of --store (one sequence per row).")
flags.DEFINE_string("labels", None, "Optional (N,) int .npy of token classes for --acts.")
flags.DEFINE_string("out", "analysis_out", "Output directory (one subdirectory per crosscoder).")
flags.DEFINE_string("latents", "all", "Latents: all, chat-only, base-only, exclusive, shared, or comma-separated "
                    "indices.")
flags.DEFINE_integer("per_bucket", 100, "Sequences per bucket: the top ones, and sampled per quantile bucket "
                     "(reference: 100).")
flags.DEFINE_list("fractions", ["0.25", "0.5", "0.75", "0.95", "1.0"], "Bucket edges as fractions of the max.")
flags.DEFINE_integer("window_before", 24, "Tokens kept before the max token.")
flags.DEFINE_integer("window_after", 8, "Tokens kept after the max token.")
flags.DEFINE_string("max_activation_from", "auto", "auto (latents.parquet of analyze in the output directory, "
                    "when it saw the same rows), a latents.parquet path or its directory, or 'pass' (compute).")
flags.DEFINE_integer("batch_size", 4096, "Rows per jitted step (whole sequences; >= the longest sequence).")
flags.DEFINE_integer("max_sequences", 256, "Sequences per step at most.")
flags.DEFINE_bool("dedup", True, "Skip sequences whose token ids repeat an earlier sequence.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("max_tokens", None, "Use only the first rows of the store.")
flags.DEFINE_integer("mesh_latent", 1, "Devices on the mesh's latent axis (the rest shard tokens).")
flags.DEFINE_float("max_state_gb", 4.0, "Refuse to start when the device state would exceed this (GiB per device).")
flags.DEFINE_float("max_output_gb", 16.0, "Refuse to start when the examples could exceed this much host memory (GiB).")
flags.DEFINE_bool("progress", True, "Progress bars.")
flags.DEFINE_bool("overwrite", False, "Write into --out although it holds files that are not an analysis output "
                  "(nothing there is deleted).")
flags.mark_flag_as_required("crosscoder")


def _given_max(spec: str, out_dir: Path, num_rows: int):
    """(max_activation array or None, description)."""
    import numpy as np
    import pandas as pd

    if spec == "pass":
        return None, "pass"
    if spec == "auto":
        table, summ = out_dir / "latents.parquet", out_dir / "summary.json"
        if not (table.is_file() and summ.is_file()):
            return None, "pass"
        s = json.loads(summ.read_text())
        same = s.get("num_tokens") == num_rows and s.get("store") == FLAGS.store and s.get("acts") == FLAGS.acts
        if not same:
            log.info("%s saw other rows than this run: computing the max in a pass", summ)
            return None, "pass"
        path = table
    else:
        path = Path(spec)
        path = path / "latents.parquet" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--max_activation_from={spec}: no latents.parquet there; run "
                                    "experiments/analyze.py first or pass --max_activation_from=pass")
    col = pd.read_parquet(path, columns=["max_activation"])["max_activation"].to_numpy(np.float64)
    return col, str(path)


@user_errors
def main(argv):
    del argv
    from jaxcoders.analysis import examples as exm
    from jaxcoders.analysis import inputs as cli
    from jaxcoders.io.remote import local_output

    claim_output_dir(FLAGS.out, "analysis", overwrite=FLAGS.overwrite)
    acts, labels, classes = cli.open_activations(FLAGS.store, FLAGS.acts, FLAGS.labels)
    rows = None
    if not hasattr(acts, "read_column") and "token_class" in labels:
        rows = {"token_classes": labels["token_class"]}
    mesh = cli.mesh_from_flags(FLAGS.mesh_latent)
    n = len(acts) if FLAGS.max_tokens is None else min(len(acts), FLAGS.max_tokens)
    for path in [p for p in FLAGS.crosscoder.split(",") if p.strip()]:
        name = cli.crosscoder_name(path)
        with local_output(FLAGS.out, keep=True) as out:  # keep: analyze's latents.parquet may be there
            _collect_one(exm, path, name, out, acts, rows, mesh, n)


def _collect_one(exm, path, name, out: Path, acts, rows, mesh, n: int) -> None:
    """Collect one crosscoder's examples into `out/name` (a local folder; see local_output)."""
    from jaxcoders.io.remote import shown

    out_dir = out / name
    given, source = _given_max(FLAGS.max_activation_from, out_dir, n)
    res = exm.collect_examples(
        path, acts, rows=rows, latents=None if FLAGS.latents == "all" else FLAGS.latents, max_activation=given,
        per_bucket=FLAGS.per_bucket, fractions=[float(f) for f in FLAGS.fractions],
        before=FLAGS.window_before, after=FLAGS.window_after, batch_size=FLAGS.batch_size,
        max_sequences=FLAGS.max_sequences, dedup=FLAGS.dedup, seed=FLAGS.seed, mesh=mesh,
        max_rows=FLAGS.max_tokens, max_state_bytes=FLAGS.max_state_gb * 2 ** 30,
        max_output_bytes=FLAGS.max_output_gb * 2 ** 30, progress=FLAGS.progress)
    res["meta"].update(crosscoder=str(path), store=FLAGS.store, acts=FLAGS.acts, max_activation_file=source)
    paths = exm.write_examples(res, out_dir)
    m = res["meta"]
    print(f"{name}: examples of {m['num_latents']} latents ({len(res['examples']['latent'])} examples in "
          f"{len(m['buckets'])} buckets) from {m['num_sequences']} sequences "
          f"({m['duplicate_sequences']} duplicates skipped), {m['seconds']:.1f} s -> "
          f"{shown(out_dir, out, FLAGS.out)}")
    print(json.dumps({k: shown(v, out, FLAGS.out) for k, v in paths.items()}))


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
