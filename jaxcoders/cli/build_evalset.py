r"""Build the causal evaluation set: the chat model's own answers to a prompt set, as conversations.

    python experiments/build_evalset.py --chat_model=google/gemma-2-2b-it \
        --dataset=HuggingFaceH4/ultrachat_200k --split=test_sft --chat_column=messages \
        --num_conversations=512 --max_new_tokens=512 --out=ultrachat_gemma_responses.jsonl

`--dataset` is a datasets source (hub name, local jsonl / json / parquet / csv / txt file or
directory) with conversations in `--chat_column` (assistant turns dropped and regenerated turn by
turn, conditioned on the model's own earlier answers) or plain prompts in `--prompt_column`.
Greedy by default, `--sample` draws (seeded); batched; a rerun with the same flags resumes after the
last complete batch and writes the same file. Output: one JSON line per conversation
(`conversation`: [{role, content}], what `experiments/interventions.py --chat_column=conversation`
reads) and `<out>.meta.json`. See docs/paper.md (the evaluation set).
"""
from __future__ import annotations

import os

from absl import flags

from jaxcoders.cli.common import run_app, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("chat_model", None, "The chat model that answers (path or hub name).")
flags.DEFINE_string("dataset", None, "Prompts: a datasets source or a local file / directory.")
flags.DEFINE_string("dataset_config", None, "Config name of a hub dataset.")
flags.DEFINE_string("split", "train", "Split of --dataset.")
flags.DEFINE_string("chat_column", "conversation", "Column with conversations (OpenAI / ShareGPT messages).")
flags.DEFINE_string("prompt_column", None, "Column with plain prompts instead of --chat_column.")
flags.DEFINE_string("out", None, "Output .jsonl (with <out>.meta.json beside it).")
flags.DEFINE_integer("num_conversations", 512, "Conversations to write (the first usable rows).")
flags.DEFINE_integer("max_turns", 0, "User turns answered per conversation (0 = all).")
flags.DEFINE_integer("max_new_tokens", 256, "Tokens per generated answer.")
flags.DEFINE_integer("max_prompt_len", 1024, "A turn whose prompt is longer ends its conversation there.")
flags.DEFINE_bool("sample", False, "Sample instead of greedy decoding (seeded per batch).")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 8, "Conversations per generation batch (part of the settings a resume must keep).")
flags.DEFINE_string("device", "auto", "torch device: auto, cpu, cuda, ...")
flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16", "float16", "auto"], "Dtype the model runs in.")
flags.DEFINE_bool("progress", True, "Progress bar (lines when not on a terminal).")
for _name in ("chat_model", "dataset", "out"):
    flags.mark_flag_as_required(_name)


@user_errors
def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from jaxcoders.demo.stages import quiet_libraries

    quiet_libraries()
    from jaxcoders.interventions.evalset import EvalSetConfig, build_evalset

    cfg = EvalSetConfig(
        chat_model=FLAGS.chat_model, dataset=FLAGS.dataset, out=FLAGS.out,
        chat_column=None if FLAGS.prompt_column else FLAGS.chat_column, prompt_column=FLAGS.prompt_column,
        split=FLAGS.split, dataset_config=FLAGS.dataset_config, num_conversations=FLAGS.num_conversations,
        max_turns=FLAGS.max_turns, max_new_tokens=FLAGS.max_new_tokens, max_prompt_len=FLAGS.max_prompt_len,
        sample=FLAGS.sample, temperature=FLAGS.temperature, top_p=FLAGS.top_p, seed=FLAGS.seed,
        batch_size=FLAGS.batch_size, device=FLAGS.device, model_dtype=FLAGS.model_dtype, progress=FLAGS.progress)
    meta = build_evalset(cfg)
    print(f"{meta['conversations']} conversations ({meta['empty_prompts_skipped']} empty prompts skipped) → {FLAGS.out}")


def run():
    """Entry point of the installed command."""
    run_app(main, __doc__)


if __name__ == "__main__":
    run()
