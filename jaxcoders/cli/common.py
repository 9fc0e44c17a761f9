"""What every command shares: running its absl main with quiet third-party logging, and one
`error: ...` line (exit status 2) for bad input.

Logging: absl's and the libraries' INFO lines (orbax, jax, tensorstore) are off unless the command
line asks for them with `--verbosity=0` (or `-v 0`; higher for more). jaxcoders' own messages (the
logger "jaxcoders") always print as plain lines on stderr.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn

from absl import app, flags

HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
QUIET_LOGGERS = ("absl", "orbax", "jax", "jax._src", "tensorstore", "etils", "datasets", "transformers", "httpx")


def configure_logging() -> None:
    """Third-party INFO logs off unless --verbosity was given; jaxcoders' messages on stderr."""
    from absl import logging as absl_logging

    explicit = flags.FLAGS["verbosity"].present
    if not explicit:
        absl_logging.set_verbosity(absl_logging.WARNING)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    own = logging.getLogger("jaxcoders")
    if not any(getattr(h, "_jaxcoders", False) for h in own.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._jaxcoders = True
        own.addHandler(handler)
    own.setLevel(logging.INFO)
    own.propagate = False


def fail(message: str) -> NoReturn:
    """One clear sentence, no traceback: `error: <message>` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


USER_ERRORS = (ValueError, FileNotFoundError)


def one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def user_errors(main: Callable) -> Callable:
    """Bad input (ValueError and its kin: a missing file, a wrong shape, an unknown crosscoder)
    becomes one `error:` line; other exceptions keep their traceback."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            fail(one_line(e))

    wrapped.__name__ = getattr(main, "__name__", "main")
    return wrapped


def run_app(main: Callable, doc: str) -> None:
    """Run an absl `main(argv)` as a command: its module docstring is the --help text (also when it
    runs as an installed console script), logging is configured after the flags are parsed."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and doc:
        main_module.__doc__ = doc

    def wrapped(argv):
        configure_logging()
        return main(argv)

    asked_help = any(a in HELP_FLAGS or a.startswith("--helpfull") for a in sys.argv[1:])
    try:
        app.run(wrapped)
    except SystemExit as e:  # absl exits 1 after printing the help it was asked for
        if asked_help and e.code == 1:
            sys.exit(0)
        raise
