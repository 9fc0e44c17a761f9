"""Train a crosscoder (L1, BatchTopK or tied) on one CPU/GPU or on every host of a TPU pod.

The command lives in the package (jaxcoders/cli/train.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-train` / `jaxcoders train`. `--help` shows its usage.
"""
from jaxcoders.cli.train import run

if __name__ == "__main__":
    run()
