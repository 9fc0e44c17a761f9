"""Online analysis: the top crosscoder latents of every token of a prompt or a chat.

The command lives in the package (jaxcoders/cli/inspect_prompt.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-inspect-prompt` / `jaxcoders inspect-prompt`. `--help` shows its usage.
"""
from jaxcoders.cli.inspect_prompt import run

if __name__ == "__main__":
    run()
