"""A local interactive dashboard of a crosscoder (latent browser, latent pages, prompts, steering).

The command lives in the package (jaxcoders/cli/dashboard.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-dashboard` / `jaxcoders dashboard`. `--help` shows its usage.
"""
from jaxcoders.cli.dashboard import run

if __name__ == "__main__":
    run()
