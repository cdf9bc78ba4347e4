"""train.log: the run's log lines, written by rank 0 beside its console output."""
from __future__ import annotations

import logging
from pathlib import Path

from allspark.runs.folder import RunFolder


class _RunLogHandler(logging.FileHandler):
    """train.log: a line that cannot be written (a full disk) is dropped quietly; stderr still shows it."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logger(run_dir: Path | None, name: str = "allspark", console: bool = True) -> logging.Logger:
    """Logger writing to run_dir/train.log (when given) and, with `console` (rank 0 of a torchrun), to stderr."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler()] if console else []
    if run_dir is not None:
        handlers.append(_RunLogHandler(RunFolder(run_dir).log))
    for handler in handlers or [logging.NullHandler()]:  # no handler at all would print warnings anyway
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
