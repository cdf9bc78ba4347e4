"""Every exception a user can fix, with its exit status. Library code raises them; `allspark.cli.main` alone
turns one into a single line on stderr (and the run's train.log) and exits with its `exit_status`."""
from __future__ import annotations

import signal
from pathlib import Path


class InputError(ValueError):
    """An input the user can fix (a config value, a data file, a checkpoint, an option): one line, exit 1."""

    exit_status = 1


class ConfigError(InputError):
    """A configuration value is missing, unknown, of the wrong type or out of range; `keys` name it."""

    exit_status = 2

    def __init__(self, message: str, *keys: str):
        super().__init__(message)
        self.keys = keys


class MemoryBudgetError(ConfigError):
    """A training step or an inference piece would need more memory than the machine has free (engine/memory_budget):
    refused before anything is allocated, naming what to lower."""


class DeviceError(InputError):
    """`--device` asks for hardware this machine does not have."""

    exit_status = 2


class DataError(InputError):
    """One bad file: `path: problem`.

    Raised in a DataLoader worker, it reaches the main process rebuilt from one argument, torch's
    report (the worker's traceback as text): the message is recovered from it, the report kept for --debug.
    """

    def __init__(self, path: str | Path, problem: str | None = None):
        self.worker_report = None
        if problem is None:
            self.worker_report = str(path)
            message = self.worker_report.rsplit(f"{type(self).__name__}: ", 1)[-1].strip()
            path, _, problem = message.partition(": ")
        super().__init__(str(path), problem)
        self.path, self.problem = str(path), problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class UsageError(InputError):
    """Arguments the command cannot act on as given (a required one left out, two that exclude each other)."""

    exit_status = 2


class OutputExistsError(InputError):
    """An output is in the way: a file that exists without --force, or two inputs that would write the same file."""


class CheckFailedError(InputError):
    """A result failed the check the command runs on it (an export whose logits differ from PyTorch's)."""


class CheckpointError(InputError):
    """A checkpoint file that is not ours, is damaged, or does not match its run."""


class ConversionError(InputError):
    """A checkpoint does not fit the model: keys left over, keys missing, or shapes that differ."""


class MissingDependencyError(InputError):
    """An optional dependency (an extra of the package) is not installed."""


class DiskFullError(InputError):
    """A file could not be written for want of space; the file it was to replace is intact."""


class EngineError(InputError):
    """The ONNX engine cannot run this request (no onnxruntime, no matching export, a CUDA device); with
    `--engine onnx` an error, with `--engine auto` the reason PyTorch runs instead."""


class NonFiniteLossError(InputError):
    """The loss became NaN or infinite; the run stops and `latest` keeps the last good state (exit 3)."""

    exit_status = 3


class TrainingInterrupted(InputError):
    """The run stopped on SIGINT/SIGTERM after saving `latest` (exit 128 + the signal's number)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop now, without saving (exit 128 + the signal's number)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}; the last saved checkpoint is kept")
        self.exit_status = 128 + signum
