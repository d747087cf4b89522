"""User-facing error types. Each carries one line naming the problem and the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed range."""


def check(condition: bool, message: str) -> None:
    """Raises ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)
