"""Planted ground-truth benchmark: L1, BatchTopK, tied (η sweep) and shared-latent crosscoders

The command lives in the package (jaxcoders/cli/toy.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-toy` / `jaxcoders toy`. `--help` shows its usage.
"""
from jaxcoders.cli.toy import run

if __name__ == "__main__":
    run()
