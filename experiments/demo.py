"""The built-in demo: the whole crosscoder model-diffing pipeline on a real (tiny) base/chat model pair.

The command lives in the package (jaxcoders/cli/demo.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-demo` / `jaxcoders demo`. `--help` shows its usage.
"""
from jaxcoders.cli.demo import run

if __name__ == "__main__":
    run()
