"""Errors a user can fix. The CLI prints them as one line on stderr and exits with status 2."""

import re

WORD_MAX = 100  # a quoted value longer than this (a 5000-character name) is cut in messages


def clip_words(text: str, limit: int = WORD_MAX) -> str:
    """``text`` with every run of more than ``limit`` non-space characters cut to ``limit`` (ending in '...'), so
    a message that quotes a huge value stays one readable line; lists of allowed values (', '-separated) stay."""
    return re.sub(r"\S{%d,}" % (limit + 1), lambda m: m.group(0)[: limit - 3] + "...", text)


class AdvbenchError(Exception):
    """Base of user-facing errors: the message alone must say what is wrong and what is allowed."""


class SuiteError(AdvbenchError):
    """A suite file or --set override is invalid. The message names the file, the field path and the rule."""

    def __init__(self, source: str, path: str, message: str) -> None:
        path, message = clip_words(path), clip_words(message)
        self.source, self.path, self.message = source, path, message
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(where + message)


class DataError(AdvbenchError):
    """A dataset path is missing or holds something the loader cannot read."""
