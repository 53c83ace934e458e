"""The trainer's error types. The CLI maps them to exit codes at one place (`cli.main`).

A wrong config file or override raises `tropd.errors.ConfigError`, the one the teacher raises
too; the CLI treats it as a `TrainerError` (exit code 2).
"""


class TrainerError(Exception):
    """Bad input a user must fix (paths, tokenizer, teacher capabilities): exit code 2."""


class SetupError(TrainerError):
    """The run cannot start; the message says why and what to change."""


class TeacherRefused(TrainerError):
    """The teacher answered a training call with a final error (INVALID_ARGUMENT,
    FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED, tokenizer mismatch, ...): no retry
    can change it, so the run stops at once with the teacher's message (exit code 2)."""


class TrainingAborted(RuntimeError):
    """Training stopped for a reason outside the user's input (the teacher stayed unreachable
    for `teacher.outage_s`): exit code 1."""
