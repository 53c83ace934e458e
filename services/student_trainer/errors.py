"""The trainer's error types. The CLI maps them to exit codes at one place (`cli.main`).

A wrong config file or override raises `tropd.errors.ConfigError`, the one the teacher raises
too; the CLI treats it as a `TrainerError` (exit code 2).
"""


class TrainerError(Exception):
    """Bad input a user must fix (paths, tokenizer, teacher capabilities): exit code 2."""


class SetupError(TrainerError):
    """The run cannot start; the message says why and what to change."""


class TrainingAborted(RuntimeError):
    """Training stopped for a reason outside the user's input (teacher lost): exit code 1."""
