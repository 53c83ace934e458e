"""Errors both sides of tropd share. Light on purpose (no imports): the trainer and the teacher
raise the same `ConfigError`, and each CLI maps it to its own exit code."""


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field and its source."""
