"""Latent Scaling (docs/method.md §6): which chat-only latents are really chat-specific.

The command lives in the package (jaxcoders/cli/latent_scaling.py); this file runs it from a checkout with the
same flags as the installed `jaxcoders-latent-scaling` / `jaxcoders latent-scaling`. `--help` shows its usage.
"""
from jaxcoders.cli.latent_scaling import run

if __name__ == "__main__":
    run()
