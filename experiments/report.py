"""Write one self-contained static HTML report per crosscoder (opens from disk; no server, no network).

The command lives in the package (jaxcoders/cli/report.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-report` / `jaxcoders report`. `--help` shows its usage.
"""
from jaxcoders.cli.report import run

if __name__ == "__main__":
    run()
