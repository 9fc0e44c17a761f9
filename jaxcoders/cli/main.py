"""`jaxcoders <command> [flags]`: runs one command's absl main (`jaxcoders --help` lists them)."""
from __future__ import annotations

import importlib
import sys

# command -> (module of jaxcoders.cli, one line of what it does)
COMMANDS = {
    "extract": ("extract", "extract paired base/chat residual-stream activations into an ActivationStore"),
    "train": ("train", "train a crosscoder (L1, BatchTopK, tied) from a preset config; resumable"),
    "analyze": ("analyze", "decoder metrics, usage statistics and Latent Scaling of crosscoders"),
    "latent-scaling": ("latent_scaling", "Latent Scaling alone (β, ν^ε, ν^r per latent)"),
    "collect-examples": ("collect_examples", "max-activating examples per latent (quantile buckets)"),
    "report": ("report", "a self-contained static HTML report of an analysis"),
    "interventions": ("interventions", "causal evaluation: splice crosscoder edits into the chat model"),
    "inspect-prompt": ("inspect_prompt", "the top latents of a prompt, token by token, in both models"),
    "toy": ("toy", "planted ground-truth benchmark: which architecture recovers chat-only features"),
    "benchmark": ("benchmark", "throughput of the jitted train step (L1, BatchTopK, tied)"),
    "plot-benchmark": ("plot_benchmark", "chart and table of benchmark JSON lines"),
    "demo": ("demo", "the whole method on a built-in tiny model pair, offline"),
    "accelerator-check": ("accelerator_check", "correctness and throughput on one GPU/TPU, in one run"),
    "paper": ("paper", "every figure and table of the paper for an L1 and a BatchTopK crosscoder"),
    "build-evalset": ("build_evalset", "the causal evaluation set: the chat model's own responses to prompts"),
    "dashboard": ("dashboard", "local interactive dashboard: browse latents, type prompts, steer"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jaxcoders <command> [flags]   (jaxcoders <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1].replace("_", "-")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[1]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"jaxcoders.cli.{COMMANDS[name][0]}")
    sys.argv = [f"jaxcoders {name}"] + argv[2:]
    module.run()


def _entry(name: str):
    def run() -> None:
        main([f"jaxcoders-{name}", name] + sys.argv[1:])

    return run


# one console script per command: jaxcoders-train, jaxcoders-extract, ...
extract = _entry("extract")
train = _entry("train")
analyze = _entry("analyze")
latent_scaling = _entry("latent-scaling")
collect_examples = _entry("collect-examples")
report = _entry("report")
interventions = _entry("interventions")
inspect_prompt = _entry("inspect-prompt")
toy = _entry("toy")
benchmark = _entry("benchmark")
plot_benchmark = _entry("plot-benchmark")
demo = _entry("demo")
accelerator_check = _entry("accelerator-check")
paper = _entry("paper")
build_evalset = _entry("build-evalset")
dashboard = _entry("dashboard")

if __name__ == "__main__":
    main()
