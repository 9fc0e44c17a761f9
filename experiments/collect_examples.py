"""Collect max-activating examples per latent in activation-quantile buckets (for report.py).

The command lives in the package (jaxcoders/cli/collect_examples.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-collect-examples` / `jaxcoders collect-examples`. `--help` shows its usage.
"""
from jaxcoders.cli.collect_examples import run

if __name__ == "__main__":
    run()
