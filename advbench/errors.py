"""Errors a user can fix. The CLI prints them as one line on stderr and exits with status 2."""


class AdvbenchError(Exception):
    """Base of user-facing errors: the message alone must say what is wrong and what is allowed."""


class SuiteError(AdvbenchError):
    """A suite file or --set override is invalid. The message names the file, the field path and the rule."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source, self.path, self.message = source, path, message
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(where + message)


class DataError(AdvbenchError):
    """A dataset path is missing or holds something the loader cannot read."""
