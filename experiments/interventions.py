"""Causal evaluation of a crosscoder: split both models at layer L, edit the residual, continue, and

The command lives in the package (jaxcoders/cli/interventions.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-interventions` / `jaxcoders interventions`. `--help` shows its usage.
"""
from jaxcoders.cli.interventions import run

if __name__ == "__main__":
    run()
