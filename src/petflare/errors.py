"""Exceptions for user-facing failures; the CLIs map them to exit code 2 and a one-line message."""

from __future__ import annotations

from pathlib import Path


class PetflareInputError(ValueError):
    """Bad input supplied by the user (a file, a folder, a manifest row).

    The message always names the offending file so a user can act on it without a traceback.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self) -> tuple[type, tuple[Path | None, str]]:
        # an error raised in a worker process reaches the main one (and its exit code 2) whole
        return type(self), (self.path, self.problem)


class OutputExistsError(PetflareInputError):
    """An output already exists and overwriting was not requested."""
