"""The toolkit's own exceptions.

Every user mistake (a truncated model file, a photo that cannot be read, a landmark file with the wrong
number of points) is raised as a :class:`MorphableError` subclass whose message names the file and the
problem in one line. The CLI prints that line and exits non-zero; tracebacks are for our own bugs.
"""
from __future__ import annotations

from os import PathLike


class MorphableError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ModelFileError(MorphableError):
    """A model file (or one of its side files) is missing, truncated, corrupted or of the wrong layout.

    Args:
        path: the offending file.
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, path: str | PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputError(MorphableError):
    """A user input other than a model file (photo, landmark file, parameter file) is unusable."""

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")
