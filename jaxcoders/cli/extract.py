"""Extract paired base/chat residual-stream activations at layer L into an ActivationStore.

Gemma-2-2B / -it, layer 13, FineWeb + LMSYS-Chat-1M (50M + 50M training tokens, 5M + 5M
validation), on a GPU VM, written straight to GCS (docs/extract.md has the full story):

    python experiments/extract_activations.py \\
      --base_model=google/gemma-2-2b --chat_model=google/gemma-2-2b-it --layer=13 \\
      --dataset=HuggingFaceFW/fineweb,lmsys/lmsys-chat-1m --dataset_config=sample-10BT, \\
      --split=train --text_column=text, --chat_column=,conversation \\
      --max_tokens=50M --val_max_tokens=5M --seq_len=1024 --batch_size=16 \\
      --model_dtype=bfloat16 --dtype=bfloat16 --out=gs://MY_BUCKET/acts/gemma2-2b-l13

Per-dataset flags take comma-separated lists (one value per --dataset, or one value for all; an
empty entry means "none"). Killing the command and rerunning it continues where it stopped; a
different command against an existing --out is refused unless --overwrite.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("base_model", None, "Base model: hub name or local directory (index 0 in the store).")
flags.DEFINE_string("chat_model", None, "Chat model: hub name or local directory (index 1 in the store).")
flags.DEFINE_string("base_revision", None, "Hub revision of --base_model.")
flags.DEFINE_string("chat_revision", None, "Hub revision of --chat_model.")
flags.DEFINE_integer("layer", None, "Block L (0-indexed): stores the residual stream after it = HF hidden_states[L+1].")
flags.DEFINE_string("dataset", None, "Comma-separated datasets: hub names or local paths (jsonl/json/parquet/csv/txt "
                    "files, directories).")
flags.DEFINE_string("dataset_config", "", "Per dataset: hub dataset config name (e.g. sample-10BT).")
flags.DEFINE_string("split", "train", "Per dataset: split to read.")
flags.DEFINE_string("text_column", "", "Per dataset: column with plain text (tokenized with the base tokenizer).")
flags.DEFINE_string("chat_column", "", "Per dataset: column with conversations ([{role, content}, ...]), rendered "
                    "with the chat model's chat template.")
flags.DEFINE_string("max_tokens", "1M", "Per dataset: training tokens (rows) to store, e.g. 50M.")
flags.DEFINE_string("val_max_tokens", "0", "Per dataset: validation tokens to store (0 = no validation split).")
flags.DEFINE_string("val_split", "", "Per dataset: split for validation; empty = the documents that follow the "
                    "training documents in --split (held out).")
flags.DEFINE_integer("seq_len", 1024, "Documents are truncated to this many tokens.")
flags.DEFINE_integer("batch_size", 1, "Sequences per forward pass. 1 = unpadded, bitwise equal to model(ids); "
                     ">1 = length-sorted, right-padded batches (faster on accelerators).")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Dtype of the stored activations.")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the models run in.")
flags.DEFINE_boolean("drop_bos", False, "Do not store rows of the BOS token (the models still see it).")
flags.DEFINE_string("ignore_first_n", "0", "Per dataset: do not store the first n positions of each sequence "
                    "(e.g. Llama-3 chat system header: 25, Qwen: 21).")
flags.DEFINE_string("attn_implementation", None, "transformers attention implementation (default: the model's).")
flags.DEFINE_string("device", "auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
flags.DEFINE_enum("streaming", "auto", ["auto", "true", "false"], "Stream hub datasets (auto: yes for hub, "
                  "no for local paths).")
flags.DEFINE_integer("num_threads", 0, "torch CPU threads (0 = torch's default).")
flags.DEFINE_integer("chunk_rows", None, "Rows per stored chunk (default: ≈ 8 MiB chunks).")
flags.DEFINE_string("out", None, "Store URL: local path, file://, gs://bucket/path.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing store at --out.")
flags.DEFINE_boolean("progress", True, "Show a progress bar (also off when $CI is set or stderr is not a TTY).")
for _name in ("base_model", "chat_model", "layer", "dataset", "out"):
    flags.mark_flag_as_required(_name)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from jaxcoders.extract.run import USER_ERRORS, ExtractConfig, dataset_specs, run_extraction

    logging.getLogger("jaxcoders").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(message)s")
    try:
        specs = dataset_specs(
            FLAGS.dataset, split=FLAGS.split, text_column=FLAGS.text_column, chat_column=FLAGS.chat_column,
            dataset_config=FLAGS.dataset_config, max_tokens=FLAGS.max_tokens, val_max_tokens=FLAGS.val_max_tokens,
            val_split=FLAGS.val_split, ignore_first_n=FLAGS.ignore_first_n,
        )
        cfg = ExtractConfig(
            base_model=FLAGS.base_model, chat_model=FLAGS.chat_model, layer=FLAGS.layer, datasets=specs,
            out=FLAGS.out, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
            model_dtype=FLAGS.model_dtype, drop_bos=FLAGS.drop_bos, base_revision=FLAGS.base_revision,
            chat_revision=FLAGS.chat_revision, attn_implementation=FLAGS.attn_implementation, device=FLAGS.device,
            streaming={"auto": None, "true": True, "false": False}[FLAGS.streaming], chunk_rows=FLAGS.chunk_rows,
            overwrite=FLAGS.overwrite, progress=FLAGS.progress, num_threads=FLAGS.num_threads,
        )
        url = run_extraction(cfg)
    except USER_ERRORS as e:  # our errors are one clear sentence: no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from jaxcoders.data.store import ActivationStore

    print(ActivationStore.open(url))


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
