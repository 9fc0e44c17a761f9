"""Analyse crosscoders: decoder metrics, usage statistics and Latent Scaling, one table each.

The command lives in the package (jaxcoders/cli/analyze.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-analyze` / `jaxcoders analyze`. `--help` shows its usage.
"""
from jaxcoders.cli.analyze import run

if __name__ == "__main__":
    run()
