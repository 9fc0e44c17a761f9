"""Online analysis: the top crosscoder latents of every token of a prompt or a chat.

    python experiments/inspect_prompt.py \\
      --base_model=google/gemma-2-2b --chat_model=google/gemma-2-2b-it --layer=13 \\
      --crosscoder=runs/gemma2-btk/export \\
      --chat='[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Gemma."}]' \\
      --top=5 --json_out=inspect.json

Both models run to block L only, on the same token ids (a chat is rendered with the chat model's
template); for each token the `--top` latents by scaled activation f·c are printed with their
Δnorm tag (C chat-only, B base-only, S shared, o other). `--latents=chat-only` (or base-only,
shared, exclusive, or comma-separated indices) ranks only those latents. `--json_out` writes the
same table as JSON (for the report).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("base_model", None, "Base model: hub name or local directory.")
flags.DEFINE_string("chat_model", None, "Chat model: hub name or local directory.")
flags.DEFINE_string("crosscoder", None, "Crosscoder: reference directory or training workdir.")
flags.DEFINE_integer("layer", None, "Block L (0-indexed): residual after it = HF hidden_states[L+1].")
flags.DEFINE_string("prompt", None, "Plain text (tokenized with the chat tokenizer, BOS added).")
flags.DEFINE_string("chat", None, 'A chat as JSON: [{"role": "user", "content": "hi"}, ...] (rendered with the '
                    "chat template), or @file.json.")
flags.DEFINE_integer("top", 5, "Latents shown per token.")
flags.DEFINE_string("latents", "all", "Rank only these latents: all, chat-only, base-only, shared, exclusive, "
                    "or comma-separated indices.")
flags.DEFINE_integer("max_len", 1024, "Truncate to this many tokens.")
flags.DEFINE_string("device", "auto", "torch device: auto, cpu, cuda, ...")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the models run in.")
flags.DEFINE_string("json_out", None, "Also write the table as JSON here.")
for _name in ("base_model", "chat_model", "crosscoder", "layer"):
    flags.mark_flag_as_required(_name)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from jaxcoders.analysis.decoder import select_latents
    from jaxcoders.extract.models import ModelError
    from jaxcoders.extract.text import DataError
    from jaxcoders.interventions.codes import CrosscoderEdits, InterventionError
    from jaxcoders.interventions.online import format_table, inspect_prompt, parse_chat_arg
    from jaxcoders.io.reference import ReferenceFormatError

    try:
        chat = None if FLAGS.chat is None else parse_chat_arg(FLAGS.chat)
        cc = CrosscoderEdits(FLAGS.crosscoder)
        try:
            latents = select_latents(cc.model, FLAGS.latents)
        except ValueError as e:
            raise InterventionError(f"--latents: {e}") from None
        result = inspect_prompt(FLAGS.base_model, FLAGS.chat_model, cc, FLAGS.layer, prompt=FLAGS.prompt, chat=chat,
                                top=FLAGS.top, latents=latents, max_len=FLAGS.max_len, device=FLAGS.device,
                                model_dtype=FLAGS.model_dtype)
    except (InterventionError, ModelError, DataError, ReferenceFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    result["crosscoder"] = FLAGS.crosscoder
    print(format_table(result))
    if FLAGS.json_out:
        Path(FLAGS.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.json_out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
        print(f"→ {FLAGS.json_out}")


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
