"""Turn experiments/benchmark.py's JSON lines into a PNG (bar chart + table) and a Markdown table.

The command lives in the package (jaxcoders/cli/plot_benchmark.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-plot-benchmark` / `jaxcoders plot-benchmark`. `--help` shows its usage.
"""
from jaxcoders.cli.plot_benchmark import run

if __name__ == "__main__":
    run()
