"""The accelerator check: correctness and throughput on one device, in one prepared run.

The command lives in the package (jaxcoders/cli/accelerator_check.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-accelerator-check` / `jaxcoders accelerator-check`. `--help` shows its usage.
"""
from jaxcoders.cli.accelerator_check import run

if __name__ == "__main__":
    run()
