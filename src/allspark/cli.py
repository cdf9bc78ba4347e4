"""The `allspark` command: builds the parser from `allspark.commands.COMMANDS` and dispatches.

Expected failures (bad config, bad data, bad checkpoint, a path that cannot be read or written) end
in one line, `allspark CMD: error: ...`, and a non-zero exit; `--debug` or ALLSPARK_DEBUG=1 shows
the traceback instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys

from allspark.commands import COMMANDS
from allspark.errors import InputError

DEBUG_ENV = "ALLSPARK_DEBUG"
# clearer words than strerror's where a folder was expected
FOLDER_PROBLEMS = {errno.EEXIST: "exists and is not a folder", errno.ENOTDIR: "a file stands where a folder is needed"}


def command_name(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: every subcommand's name and help, and the arguments of the one `argv` names, whose
    module alone is imported."""
    parser = argparse.ArgumentParser(prog="allspark", description="Semi-supervised segmentation with AllSpark.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = command_name(argv)
    for name, (module, help_line) in COMMANDS.items():
        if name == chosen:  # adds its subparser with set_defaults(run=fn); fn(args) returns the exit status
            importlib.import_module(f"allspark.commands.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def describe(err: BaseException) -> str:
    """One line for an expected error: its message, or `path: reason` for a failed file operation."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        target = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{err.filename}{target}: {FOLDER_PROBLEMS.get(err.errno, err.strerror.lower())}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = "".join(line + ("" if index == len(lines) - 1 else " " if line.endswith(":") else "; ")
                   for index, line in enumerate(lines))
    return text or type(err).__name__


def interrupted_line(err: KeyboardInterrupt, kept: str) -> str:
    """What a stop says: the second stop signal's own words, else Ctrl-C's, with what the command keeps (`kept`,
    its parser's `interrupted` default)."""
    return str(err) or ("interrupted by SIGINT (Ctrl-C)" + (f"; {kept}" if kept else ""))


def _log_to_new_files(line: str, before: set) -> None:
    """Append `line` to the log files this command opened (a training run's train.log)."""
    for handler in logging.getLogger("allspark").handlers:
        if isinstance(handler, logging.FileHandler) and handler not in before:
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.ERROR, "levelname": "ERROR"}))
            handler.flush()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # what `train --nproc` hands on to torchrun
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    handlers = set(logging.getLogger("allspark").handlers)
    try:
        code = args.run(args)
    except BrokenPipeError:  # `allspark presets | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        code = 128 + signal.SIGPIPE
    except (InputError, OSError) as err:
        if debug:
            if getattr(err, "worker_report", None):
                print(err.worker_report, file=sys.stderr)
            raise
        line = f"allspark {args.command}: error: {describe(err)}"
        print(line, file=sys.stderr)
        _log_to_new_files(line, handlers)
        code = getattr(err, "exit_status", 1)
    except KeyboardInterrupt as err:  # Ctrl-C outside training, or a second stop signal during it (engine/stop.py)
        if debug:
            raise
        line = f"allspark {args.command}: {interrupted_line(err, getattr(args, 'interrupted', ''))}"
        print(line, file=sys.stderr)
        _log_to_new_files(line, handlers)
        code = getattr(err, "exit_status", 130)
    sys.exit(code or 0)
