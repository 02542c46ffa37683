"""Shared plumbing for the Hydra entry points: where configs live, the one entry decorator, and
how bad input exits."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf

from petflare.errors import PetflareInputError
from petflare.paths import config_dir

__all__ = ["EXIT_BAD_INPUT", "config_dir", "exit_on_bad_input", "hydra_command"]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for bad user input (missing file, wrong units, existing output, ...).
EXIT_BAD_INPUT = 2

#: Resolver used by the net configs: ``in_channels: ${len:${data.preprocessing.channels}}``.
#: Registered here, where configs are composed, so every command (and every test that composes
#: a config through this package) has it.
OmegaConf.register_new_resolver("len", lambda items: len(items), replace=True)


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


def hydra_command(
    config_name: str, *, log_info: bool = False
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """The entry-point decorator every ``petflare-*`` command uses.

    Hydra composes ``configs/<config_name>.yaml`` with the command line and calls the decorated
    body with it; a :class:`PetflareInputError` becomes one line on stderr and exit status 2.

    Args:
        config_name: the primary config (``train``, ``infer``, ...).
        log_info: show the package's INFO log lines (training progress).
    """

    def decorate(body: Callable[[DictConfig], Any]) -> Callable[[], None]:
        guarded = exit_on_bad_input(body)

        @functools.wraps(body)  # keeps the command's module: Hydra names the job after it
        def task(cfg: DictConfig) -> None:
            if log_info:
                logging.getLogger("petflare").setLevel(logging.INFO)
            guarded(cfg)

        main: Callable[[], None] = hydra.main(
            version_base="1.3", config_path=config_dir(), config_name=config_name
        )(task)
        return main

    return decorate


T = TypeVar("T")


def instantiate_settings(node: Any, expected: type[T], group: str) -> T:
    """Instantiate a config group's settings object; bad values are bad input (exit 2).

    Hydra wraps the settings class's own ``ValueError``; its message is unwrapped into one line.
    """
    from hydra.utils import instantiate

    try:
        settings = instantiate(node, _convert_="all")
    except Exception as exc:  # bad <group>.* values; Hydra wraps the ValueError
        reason = " ".join(str(exc.__cause__ or exc).split())
        raise PetflareInputError(None, f"invalid {group} parameters: {reason}") from exc
    if not isinstance(settings, expected):
        raise PetflareInputError(None, f"{group} must instantiate {expected.__name__}")
    return settings
