"""The paper's figures and tables for one L1 and one BatchTopK crosscoder, from one command.

The command lives in the package (jaxcoders/cli/paper.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-paper` / `jaxcoders paper`. `--help` shows its usage.
"""
from jaxcoders.cli.paper import run

if __name__ == "__main__":
    run()
