"""Extract paired base/chat residual-stream activations at layer L into an ActivationStore.

The command lives in the package (jaxcoders/cli/extract.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-extract` / `jaxcoders extract`. `--help` shows its usage.
"""
from jaxcoders.cli.extract import run

if __name__ == "__main__":
    run()
