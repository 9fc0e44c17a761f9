"""Causal evaluation of a crosscoder: split both models at layer L, edit the residual, continue, and
measure CE, KL(P_chat ‖ P_edited) and KL(P_base ‖ P_edited) on assistant-predicting tokens
(docs/method.md §6; docs/interventions.md has every edit's formula).

Gemma-2-2B / -it, layer 13, 512 chat conversations (the paper's setup), on a GPU:

    python experiments/interventions.py \\
      --base_model=google/gemma-2-2b --chat_model=google/gemma-2-2b-it --layer=13 \\
      --crosscoder=runs/gemma2-btk/export --dataset=ultrachat_gemma_responses.jsonl --chat_column=messages \\
      --num_conversations=512 --max_len=1024 --model_dtype=bfloat16 \\
      --latents_file=analysis_out/gemma2-btk/latents.parquet --out=interventions_out

`--latents_file` with a latent table adds `latents:best_half_nu_error` / `latents:worst_half_nu_error`
(the chat-only latents with the lowest / highest ν^ε, equal halves). Writes
`<out>/interventions.json` (means with 95% bootstrap CIs per edit), `<out>/interventions.png` and
`<out>/interventions_per_conversation.npz`, and prints one line per edit.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

from jaxcoders.interventions.edits import DEFAULT_EDITS  # noqa: E402  (numpy only; torch loads later)

FLAGS = flags.FLAGS
flags.DEFINE_string("base_model", None, "Base model: hub name or local directory.")
flags.DEFINE_string("chat_model", None, "Chat model: hub name or local directory (its chat template renders --dataset).")
flags.DEFINE_string("crosscoder", None, "Crosscoder: reference directory or training workdir (needed by crosscoder edits).")
flags.DEFINE_integer("layer", None, "Block L (0-indexed): edits the residual after it = HF hidden_states[L+1].")
flags.DEFINE_string("dataset", None, "Chat dataset: local jsonl/json/parquet file or directory, or a hub name.")
flags.DEFINE_string("chat_column", "conversation", "Column with conversations ([{role, content}, ...]).")
flags.DEFINE_string("split", "train", "Dataset split.")
flags.DEFINE_integer("num_conversations", 512, "Evaluate the first N conversations (those without assistant tokens "
                     "within --max_len are skipped and counted).")
flags.DEFINE_integer("max_len", 1024, "Conversations are truncated to this many tokens.")
flags.DEFINE_list("edits", list(DEFAULT_EDITS),
                  "Edits: base, chat, base_to_chat, chat_to_base, template, template_to_base, chat_recon, all_latents, "
                  "all_latents_no_bias, bias_only, latents (every set of --latents_file), latents:<set>, steer.")
flags.DEFINE_string("latents_file", None, "Latent sets for latents:<set> edits: .npy (one set), .json (list, or "
                    "{name: [indices]}), or a latent table (.parquet/.csv: best/worst half of chat-only latents by ν).")
flags.DEFINE_string("nu_column", "nu_error", "ν column of a latent-table --latents_file (low = genuinely chat-specific).")
flags.DEFINE_list("steer_latents", [], "Latents for the steer edit: h_src + α Σ_j d_j^chat.")
flags.DEFINE_float("steer_alpha", 1.0, "α of the steer edit.")
flags.DEFINE_enum("steer_source", "base", ["base", "chat"], "Residual the steer edit adds to.")
flags.DEFINE_enum("steer_continue", "chat", ["base", "chat"], "Model whose upper blocks continue the steer edit.")
flags.DEFINE_integer("first_k", 5, "Also report the first k assistant tokens of each turn separately.")
flags.DEFINE_integer("positions", 32, "Per-position means (KL by token position) for the first n tokens of each "
                     "assistant turn, in interventions.json `by_position` (0 = off).")
flags.DEFINE_integer("skip_first", 0, "Leave positions < n unedited (the continuing model's own residual; 1 = BOS).")
flags.DEFINE_integer("batch_size", 1, "Conversations per forward pass (right-padded).")
flags.DEFINE_string("device", "auto", "torch device: auto, cpu, cuda, cuda:1, ...")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the models run in.")
flags.DEFINE_string("attn_implementation", None, "transformers attention implementation (default: the model's).")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples (over conversations) for the 95% CIs.")
flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
flags.DEFINE_boolean("plot", True, "Write interventions.png.")
flags.DEFINE_boolean("progress", True, "Progress bar (off when $CI is set or stderr is not a terminal).")
flags.DEFINE_string("out", "interventions_out", "Output directory.")
flags.DEFINE_bool("overwrite", False, "Write into --out although it holds files that are not an interventions output "
                  "(nothing there is deleted).")
for _name in ("base_model", "chat_model", "layer", "dataset"):
    flags.mark_flag_as_required(_name)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from jaxcoders.extract.models import ModelError
    from jaxcoders.files import claim_output_dir
    from jaxcoders.extract.text import DataError
    from jaxcoders.interventions.codes import InterventionError
    from jaxcoders.interventions.run import InterventionConfig, format_table, run_interventions
    from jaxcoders.io.reference import ReferenceFormatError
    from jaxcoders.io.remote import local_copy, local_output

    if not all(s.strip().lstrip("-").isdigit() for s in FLAGS.steer_latents):
        print(f"error: --steer_latents must be integers, got {FLAGS.steer_latents}", file=sys.stderr)
        sys.exit(2)
    claim_output_dir(FLAGS.out, "interventions", overwrite=FLAGS.overwrite)
    try:
        with local_output(FLAGS.out) as out:  # gs:// alike: written locally, uploaded at the end
            latents_file = str(local_copy(FLAGS.latents_file)) if FLAGS.latents_file else None
            result = _run(InterventionConfig, run_interventions, out, latents_file)
    except (InterventionError, ModelError, DataError, ReferenceFormatError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)  # one clear sentence, no traceback
        sys.exit(2)
    print(format_table(result))
    print(f"{result['num_conversations']} conversations ({result['skipped_conversations']} skipped), "
          f"{result['tokens']['all']} scored tokens → {FLAGS.out.rstrip('/')}/interventions.json")


def _run(InterventionConfig, run_interventions, out: Path, latents_file):
    steer = [int(s) for s in FLAGS.steer_latents]
    cfg = InterventionConfig(
        base_model=FLAGS.base_model, chat_model=FLAGS.chat_model, layer=FLAGS.layer, dataset=FLAGS.dataset,
        out=str(out), crosscoder=FLAGS.crosscoder, chat_column=FLAGS.chat_column, split=FLAGS.split,
        num_conversations=FLAGS.num_conversations, max_len=FLAGS.max_len, edits=FLAGS.edits,
        latents_file=latents_file, nu_column=FLAGS.nu_column, steer_latents=steer,
        steer_alpha=FLAGS.steer_alpha, steer_source=FLAGS.steer_source, steer_continue=FLAGS.steer_continue,
        first_k=FLAGS.first_k, positions=FLAGS.positions, skip_first=FLAGS.skip_first, batch_size=FLAGS.batch_size, device=FLAGS.device,
        model_dtype=FLAGS.model_dtype, attn_implementation=FLAGS.attn_implementation, n_boot=FLAGS.n_boot,
        seed=FLAGS.seed, plot=FLAGS.plot, progress=FLAGS.progress,
    )
    return run_interventions(cfg)


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
