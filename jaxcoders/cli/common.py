"""What every command shares: running its absl main with quiet third-party logging, and one
`error: ...` line (exit status 2) for bad input.

Logging: absl's and the libraries' INFO lines (orbax, jax, tensorstore) are off unless the command
line asks for them with `--verbosity=0` (or `-v 0`; higher for more). jaxcoders' own messages (the
logger "jaxcoders") always print as plain lines on stderr.

Errors: bad flags (an unknown `--config.*` field, with the closest valid name; a value that does
not parse), the project's own errors and the usual user errors (ValueError and its kin: missing or
corrupt files, bad shapes, NaN data; a full disk) print one `error: <what, where, what to do>` line
and exit with status 2. `--debug` (or `--verbosity=1`) shows the traceback instead.
"""
from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import sys
from typing import Callable, NoReturn

from absl import app, flags

HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
QUIET_LOGGERS = ("absl", "orbax", "jax", "jax._src", "tensorstore", "etils", "datasets", "transformers", "httpx")
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               EOFError)

flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one `error:` line.")


class _NoTraceback(logging.Filter):
    """Drops the traceback of a log record (e.g. orbax logging a failed background write that our
    one `error:` line reports anyway); --debug keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def configure_logging() -> None:
    """Third-party INFO logs off unless --verbosity was given; jaxcoders' messages on stderr."""
    from absl import logging as absl_logging

    explicit = flags.FLAGS["verbosity"].present
    if not explicit:
        absl_logging.set_verbosity(absl_logging.WARNING)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if not _debugging():  # other libraries' log records keep their message but not their traceback
        for h in logging.getLogger().handlers:
            if not any(isinstance(f, _NoTraceback) for f in h.filters):
                h.addFilter(_NoTraceback())
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


def one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _debugging() -> bool:
    try:
        return bool(flags.FLAGS["debug"].value) or flags.FLAGS["verbosity"].value >= 1
    except Exception:  # flags not parsed yet
        return "--debug" in sys.argv


def _out_of_memory(e: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)


def _full_disk(e: BaseException) -> bool:
    """ENOSPC itself, or an error whose cause (or message: tensorstore, orbax) is a full disk."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def describe_error(e: BaseException) -> str:
    """The one line for an error a user can fix."""
    if _full_disk(e):
        detail = getattr(e, "strerror", None)
        if detail and detail != os.strerror(errno.ENOSPC):  # our own early check says how much is needed
            return f"{detail}; free space (or choose another output) and rerun the same command"
        where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
        return f"the disk is full{where}; free space (or choose another output) and rerun the same command"
    if isinstance(e, ModuleNotFoundError):
        return (f"the package {e.name!r} is not installed; install it (pip install {e.name}, or the extra that "
                "docs/commands.md names for this command) and rerun")
    if _out_of_memory(e):
        return ("the device ran out of memory; lower the batch size (or the dictionary size), or use more devices "
                f"({one_line(e)[:200]})")
    return one_line(e)


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, USER_ERRORS) or isinstance(e, ModuleNotFoundError) or _full_disk(e):
        return True
    return type(e).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and _out_of_memory(e)


def user_errors(main: Callable) -> Callable:
    """Bad input (USER_ERRORS, a full disk, a missing package, device memory) becomes one `error:`
    line; other exceptions keep their traceback. Ctrl-C ends with one line (status 130). With --debug
    the traceback of every error is shown."""

    def wrapped(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            if _debugging():
                raise
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except app.UsageError as e:  # a missing or contradictory flag: one line, like every other error
            if _debugging():
                raise
            fail(f"{one_line(e)}; --help lists the flags")
        except Exception as e:  # noqa: BLE001 - sorted into the user's errors and ours below
            if _debugging() or not _is_user_error(e):
                raise
            fail(describe_error(e))

    wrapped.__name__ = getattr(main, "__name__", "main")
    return wrapped


def _config_field_error(e: BaseException) -> str:
    """An unknown `--config.<section>.<field>` as one line with the closest valid names."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    bad = re.findall(r"'([A-Za-z0-9_]+)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = f"--config.{bad[0]}" if bad else "--config.?"
    for a in sys.argv[1:]:
        name = a.split("=")[0]
        if bad and name.startswith("--config.") and (f".{bad[0]}." in name + "."):
            flag = name[: name.index(f".{bad[0]}") + len(bad[0]) + 1]
            break
    msg = f"unknown config field {flag}"
    if hint:
        msg += f"; did you mean {flag.rsplit('.', 1)[0]}.{hint.group(1)}?"
    return msg + " (--config_help lists every field)"


def parse_flags(argv):
    """absl's flag parsing with one `error:` line for bad flags instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        msg = one_line(e)
        name = getattr(e, "flagname", None)
        close = difflib.get_close_matches(str(name or ""), list(flags.FLAGS), n=1) if name else []
        if close and "Did you mean" not in msg:
            msg += f" (did you mean --{close[0]}?)"
        fail(msg + "; --help lists the flags")
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown --config.* field
        if any(a.startswith("--config.") for a in argv[1:]):
            fail(_config_field_error(e))
        raise
    except (ValueError, TypeError) as e:  # ml_collections: a --config.* value of the wrong type
        fail(f"bad --config value: {one_line(e)}")


def run_app(main: Callable, doc: str) -> None:
    """Run an absl `main(argv)` as a command: its module docstring is the --help text (also when it
    runs as an installed console script), flags and user errors give one `error:` line, logging
    is configured after the flags are parsed."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and doc:
        main_module.__doc__ = doc

    def wrapped(argv):
        configure_logging()
        return main(argv)

    asked_help = any(a in HELP_FLAGS or a.startswith("--helpfull") for a in sys.argv[1:])
    if any(a in ("-h", "-?", "--help", "--helpshort") for a in sys.argv[1:]):
        # absl lists the key flags of the __main__ module, which defines none when the command runs
        # as a console script or through experiments/<name>.py: list the command module's own
        print((doc or "").rstrip() + "\n")
        command_module = sys._getframe(1).f_globals.get("__name__", "")  # the command's run() called us
        print(flags.FLAGS.module_help(command_module))
        print(flags.FLAGS.module_help(__name__))
        print("\n--helpfull lists every flag, those of absl and the libraries too.")
        sys.exit(0)
    try:
        app.run(wrapped, flags_parser=parse_flags)
    except SystemExit as e:  # absl exits 1 after printing the help it was asked for
        if asked_help and e.code == 1:
            sys.exit(0)
        raise
