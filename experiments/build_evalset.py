"""Build the causal evaluation set: the chat model's own answers to a prompt set, as conversations.

The command lives in the package (jaxcoders/cli/build_evalset.py); this file runs it from a checkout with
the same flags as the installed `jaxcoders-build-evalset` / `jaxcoders build-evalset`. `--help` shows its usage.
"""
from jaxcoders.cli.build_evalset import run

if __name__ == "__main__":
    run()
