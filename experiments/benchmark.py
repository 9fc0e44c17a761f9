"""Throughput of the full jitted train step: L1 vs BatchTopK vs tied, dense vs sparse paths.

The command lives in the package (jaxcoders/cli/benchmark.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-benchmark` / `jaxcoders benchmark`. `--help` shows its usage.
"""
from jaxcoders.cli.benchmark import run

if __name__ == "__main__":
    run()
