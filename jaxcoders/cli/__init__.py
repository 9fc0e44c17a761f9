"""The commands of jaxcoders: one absl main per module, installed as console scripts.

    jaxcoders <command> [flags]        e.g. `jaxcoders train --config=tiny --workdir=/tmp/tiny`
    jaxcoders-<command> [flags]        the same, one script per command (`jaxcoders-train ...`)
    python experiments/<name>.py       the same mains, from a checkout

`jaxcoders --help` lists the commands; `<command> --help` its flags (docs/commands.md).
"""
