r"""Write one self-contained static HTML report per crosscoder (opens from disk; no server, no network).

    python experiments/analyze.py --crosscoder=runs/btk --store=$STORE --out=analysis_out
    python experiments/collect_examples.py --crosscoder=runs/btk --store=$STORE --out=analysis_out
    python experiments/report.py --analysis=analysis_out/btk --tokenizer=google/gemma-2-2b-it

`--analysis` is a directory written by those commands (latents.parquet + summary.json and/or
examples.*), several comma-separated, or their parent (`analysis_out`: every subdirectory that has
one). Each gets `<dir>/report.html` unless `--out` names a file (one input) or a directory
(`<out>/<name>.html`). `--tokenizer` (a local path or a cached hub name; `auto` = the model named
in the store's metadata) turns token ids into text; without it tokens show as <id>.
See jaxcoders/analysis/report/ for what the page shows.
"""
from __future__ import annotations

import logging
from pathlib import Path

from absl import app, flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("analysis", None, "Analysis directory (or comma-separated list, or their parent).")
flags.DEFINE_string("out", None, "Output .html file (one input) or directory; default <analysis dir>/report.html.")
flags.DEFINE_string("tokenizer", None, "Tokenizer path/name for AutoTokenizer.from_pretrained, or 'auto'.")
flags.DEFINE_string("title", None, "Page title (default: the crosscoder's name).")
flags.DEFINE_integer("max_cards", 500, "Latent cards with examples at most (genuine, chat-only, base-only first).")
flags.DEFINE_integer("top_examples", 10, "Examples of the top bucket per card.")
flags.DEFINE_integer("bucket_examples", 5, "Examples of each quantile bucket per card.")
flags.DEFINE_string("sort_by", "latent", "Column the table is sorted by when the page opens (e.g. delta_norm: "
                    "chat-only latents first; descending except for latent and text columns).")
flags.DEFINE_string("open_latent", None, "Latent whose card is open when the page opens ('first': the first card, "
                    "i.e. genuine chat-specific then chat-only latents).")
flags.DEFINE_string("screenshot", None, "Also save a PNG of each report as headless Chromium shows it (needs selenium "
                    "and chromium + chromedriver): a .png path (one input) or a directory.")
flags.mark_flag_as_required("analysis")

MARKERS = ("latents.parquet", "latents.csv", "latent_scaling.parquet", "latent_scaling.csv", "examples.json")


def _inputs(spec: str) -> list[tuple[Path, str]]:
    """[(local analysis folder, where it came from)]; gs:// folders are downloaded first."""
    from jaxcoders.io.remote import local_copy

    dirs = []
    for item in [s.strip().rstrip("/") for s in spec.split(",") if s.strip()]:
        p = local_copy(item)
        found = []
        if any((p / m).is_file() for m in MARKERS):
            found.append((p, item))
        elif p.is_dir():
            found += [(d, f"{item}/{d.name}") for d in sorted(p.iterdir())
                      if d.is_dir() and any((d / m).is_file() for m in MARKERS)]
        dirs += found
    if not dirs:
        raise app.UsageError(f"--analysis={spec}: no directory with latents.parquet or examples.json there; run "
                             "experiments/analyze.py and/or experiments/collect_examples.py first")
    return dirs


def _tokenizer(d: Path):
    if FLAGS.tokenizer != "auto":
        return FLAGS.tokenizer
    import json

    meta = d / "examples.json"
    name = json.loads(meta.read_text()).get("tokenizer") if meta.is_file() else None
    if not name:
        logging.warning("%s: the store names no tokenizer; tokens are shown as <id>", d)
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # offline, not cached, transformers missing: ids instead of text
        logging.warning("could not load the tokenizer %s (%s); tokens are shown as <id>", name, str(e).splitlines()[0])
        return None


def _open_latent(value):
    if value in (None, "", "first"):
        return value or None
    try:
        return int(value)
    except ValueError:
        raise app.UsageError(f"--open_latent must be a latent index or 'first', got {value!r}")


@user_errors
def main(argv):
    del argv
    from jaxcoders.analysis.report import build_report
    from jaxcoders.io.remote import local_output, shown
    from jaxcoders.io.sources import is_url

    dirs = _inputs(FLAGS.analysis)
    for d, origin in dirs:
        out = None
        if FLAGS.out:
            o = FLAGS.out.rstrip("/")
            target = o if (o.endswith(".html") and len(dirs) == 1) else f"{o}/{d.name}.html"
        else:
            target = f"{origin}/report.html"
        with local_output(target.rsplit("/", 1)[0] if is_url(target) else Path(target).parent) as folder:
            out = folder / target.rsplit("/", 1)[1]
            path = build_report(d, out, tokenizer=_tokenizer(d), title=FLAGS.title, max_cards=FLAGS.max_cards,
                                top_examples=FLAGS.top_examples, bucket_examples=FLAGS.bucket_examples,
                                sort_by=FLAGS.sort_by, open_latent=_open_latent(FLAGS.open_latent))
            print(f"{d.name}: {shown(path, folder, target.rsplit('/', 1)[0]) if is_url(target) else path} "
                  f"({path.stat().st_size / 1e6:.2f} MB)")
            if FLAGS.screenshot:
                from jaxcoders.analysis.screenshot import BrowserMissing, screenshot

                o = Path(FLAGS.screenshot)
                png = o if (o.suffix == ".png" and len(dirs) == 1) else o / f"{d.name}.png"
                try:
                    print(f"{d.name}: screenshot {screenshot(path, png)}")
                except BrowserMissing as e:
                    raise app.UsageError(f"--screenshot: {e}")


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
