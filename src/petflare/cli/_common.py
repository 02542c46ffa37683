"""Shared plumbing for the Hydra entry points: where configs live and how errors exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from petflare.errors import PetflareInputError

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for bad user input (missing file, wrong units, existing output, ...).
EXIT_BAD_INPUT = 2


def config_dir() -> str:
    """Absolute path of the Hydra config folder.

    In a source checkout (editable install) this is the repository's ``configs/``; in an
    installed wheel it is the copy packaged as ``petflare/configs``.
    """
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "configs"
    if packaged.is_dir():
        return str(packaged)
    repo = here.parents[3] / "configs"
    if repo.is_dir():
        return str(repo)
    raise FileNotFoundError(f"petflare configs not found (looked in {packaged} and {repo})")


def exit_on_bad_input(func: F) -> F:
    """Turn a :class:`PetflareInputError` into a one-line message on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PetflareInputError as exc:
            print(f"petflare: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]
