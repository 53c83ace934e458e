"""The trainer's error types. The CLI maps them to exit codes at one place (`cli.main`)."""


class TrainerError(Exception):
    """Bad input a user must fix (config, paths, tokenizer, teacher capabilities): exit code 2."""


class ConfigError(TrainerError, ValueError):
    """A config file or override is wrong; the message names the key and what is allowed."""


class SetupError(TrainerError):
    """The run cannot start; the message says why and what to change."""


class TrainingAborted(RuntimeError):
    """Training stopped for a reason outside the user's input (teacher lost): exit code 1."""
