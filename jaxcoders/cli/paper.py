r"""The paper's figures and tables for one L1 and one BatchTopK crosscoder, from one command.

    python experiments/paper.py --demo_out=demo_out --out=demo_out/paper      # after `make demo`
    python experiments/paper.py --l1=runs/l1 --batchtopk=runs/btk --store=$STORE \
        --base_model=google/gemma-2-2b --chat_model=google/gemma-2-2b-it --layer=13 \
        --prompts=HuggingFaceH4/ultrachat_200k --prompt_split=test_sft --prompt_chat_column=messages \
        --num_conversations=512 --out=paper_out

Writes `<out>/paper.md` (read this: every figure and table with what it shows and how it was
computed), `<out>/figures/*.png`, the numbers behind each as CSV (`kl_by_position.csv`, ...) and
per crosscoder `<out>/<arch>/latents.parquet` (with logit lens, activation density and twins).
Runs: the analyses of each crosscoder (or reuses `--l1_analysis` / `--batchtopk_analysis`), a
separate-SAE baseline (`--sae=false` skips it), the evaluation set (the chat model's answers to
`--prompts`, or `--evalset`) and the causal evaluation. See docs/paper.md.
"""
from __future__ import annotations

import os

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("demo_out", None, "An experiments/demo.py output: crosscoders, store, models, layer and evaluation "
                    "prompts are taken from it (other flags given override).")
flags.DEFINE_string("out", None, "Output directory (default with --demo_out: <demo_out>/paper).")
flags.DEFINE_string("l1", None, "The L1 crosscoder: directory, workdir, gs://..., org/name or hf://...")
flags.DEFINE_string("batchtopk", None, "The BatchTopK crosscoder (same sources).")
flags.DEFINE_string("store", None, "ActivationStore url the crosscoders were trained on.")
flags.DEFINE_string("base_model", None, "Base model (logit lens, causal evaluation).")
flags.DEFINE_string("chat_model", None, "Chat model (logit lens, evaluation set, causal evaluation).")
flags.DEFINE_integer("layer", None, "The crosscoders' layer: the residual stream after this block.")
flags.DEFINE_string("l1_analysis", None, "Reuse this analysis directory (latents.parquet) of the L1 crosscoder.")
flags.DEFINE_string("batchtopk_analysis", None, "Reuse this analysis directory of the BatchTopK crosscoder.")
flags.DEFINE_string("tied", None, "Optional tied crosscoder: its slot-ratio scatter with the rarity filter.")
flags.DEFINE_string("prompts", None, "Prompts for the evaluation set (datasets source or local file); the chat model "
                    "answers them.")
flags.DEFINE_string("prompt_split", "train", "Split of --prompts.")
flags.DEFINE_string("prompt_chat_column", "conversation", "Column of --prompts with conversations (assistant turns "
                    "are regenerated).")
flags.DEFINE_string("prompt_column", None, "Column of --prompts with plain prompts instead.")
flags.DEFINE_string("evalset", None, "An existing evaluation set (conversations with the chat model's answers).")
flags.DEFINE_string("evalset_column", "conversation", "Conversation column of --evalset.")
flags.DEFINE_integer("num_conversations", 512, "Conversations of the causal evaluation.")
flags.DEFINE_integer("max_new_tokens", 256, "Tokens per generated assistant turn.")
flags.DEFINE_bool("sample", False, "Sample the answers (seeded) instead of greedy decoding.")
flags.DEFINE_integer("max_len", 1024, "Token budget of a conversation.")
flags.DEFINE_integer("positions", 32, "Positions of the KL-by-position curve.")
flags.DEFINE_string("nu_column", "nu_error", "ν column ranking the chat-only latents into best / worst halves.")
flags.DEFINE_integer("eval_batch_size", 4, "Conversations per forward pass of the causal evaluation.")
flags.DEFINE_integer("generate_batch_size", 8, "Conversations per generation batch.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the CIs.")
flags.DEFINE_string("device", "auto", "torch device.")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the models run in.")
flags.DEFINE_integer("max_tokens", None, "Analyse only the first rows of the store.")
flags.DEFINE_integer("batch_size", 4096, "Tokens per analysis step.")
flags.DEFINE_integer("density_bins", 20, "Bins of the activation-density histograms.")
flags.DEFINE_integer("logit_lens_k", 10, "Tokens kept per latent and direction by the logit lens.")
flags.DEFINE_integer("twin_top", 5, "Most similar latents kept per exclusive latent (twin analysis).")
flags.DEFINE_float("twin_low", 0.3, "Twin analysis: below this cosine, no similar direction.")
flags.DEFINE_float("twin_high", 0.7, "Twin analysis: from this cosine on, a twin.")
flags.DEFINE_bool("sae", True, "Train and match the separate-SAE baseline.")
flags.DEFINE_enum("sae_architecture", "batchtopk", ["batchtopk", "l1"], "Architecture of the baseline SAEs.")
flags.DEFINE_integer("sae_dict_size", None, "Latents per SAE (default: the BatchTopK crosscoder's F).")
flags.DEFINE_integer("sae_k", None, "k of BatchTopK SAEs (default: the BatchTopK crosscoder's k).")
flags.DEFINE_float("sae_l1_coefficient", 0.05, "Sparsity coefficient of L1 SAEs.")
flags.DEFINE_integer("sae_steps", 1000, "Training steps per SAE.")
flags.DEFINE_integer("sae_batch_size", 4096, "Tokens per SAE training batch.")
flags.DEFINE_float("sae_lr", 1e-4, "SAE learning rate.")
flags.DEFINE_integer("seed", 0, "Seed (SAE training, generation, bootstrap).")
flags.DEFINE_bool("overwrite", False, "Write into an --out that holds other files (beside them; nothing is "
                  "deleted).")
flags.DEFINE_integer("torch_threads", None, "torch CPU threads while the models run (default: torch's; "
                     "--demo_out: 1, the demo's models are tiny).")
flags.DEFINE_bool("progress", None, "Progress bars (default: on a terminal unless $CI is set).")

# flag -> PaperConfig field, for the flags that map one to one
FIELDS = ("l1", "batchtopk", "store", "base_model", "chat_model", "layer", "tied", "prompts", "prompt_split",
          "prompt_chat_column", "prompt_column", "evalset", "evalset_column", "num_conversations", "max_new_tokens", "sample", "max_len",
          "positions", "nu_column", "eval_batch_size", "generate_batch_size", "n_boot", "device", "model_dtype",
          "max_tokens", "batch_size", "density_bins", "logit_lens_k", "twin_top", "twin_low", "twin_high", "sae",
          "sae_architecture", "sae_dict_size", "sae_k", "sae_l1_coefficient", "sae_steps", "sae_batch_size", "sae_lr",
          "seed", "torch_threads", "overwrite")


def config_from_flags():
    import sys

    from jaxcoders.paper.config import PaperConfig, PaperError

    given = {f: FLAGS[f].value for f in FIELDS if FLAGS[f].present}
    analyses = {a: FLAGS[f"{a}_analysis"].value for a in ("l1", "batchtopk") if FLAGS[f"{a}_analysis"].value}
    progress = FLAGS.progress if FLAGS.progress is not None else (not os.environ.get("CI") and sys.stderr.isatty())
    if FLAGS.prompt_column and not FLAGS["prompt_chat_column"].present:
        given["prompt_chat_column"] = None
    if FLAGS.demo_out:
        if given.get("evalset") and "prompts" not in given:  # an evaluation set replaces the demo's prompts
            given["prompts"] = None
        cfg = PaperConfig.from_demo_out(FLAGS.demo_out, FLAGS.out, progress=progress, **given)
        if analyses:
            cfg.analyses.update(analyses)
        return cfg
    if not FLAGS.out:
        raise PaperError("--out is required (or --demo_out=<experiments/demo.py output>).")
    defaults = {f: FLAGS[f].value for f in FIELDS}
    return PaperConfig(out=FLAGS.out, analyses=analyses, progress=progress, **defaults)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from jaxcoders.demo.stages import quiet_libraries

    quiet_libraries()
    from jaxcoders.paper.run import run_paper

    cfg = config_from_flags()
    result = run_paper(cfg)
    print(f"paper.md: {result['paper_md']}")


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
