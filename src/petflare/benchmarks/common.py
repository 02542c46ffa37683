"""What the Markdown-report benchmarks share: check the output first, print and write the report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text, check_can_write


def run_report(name: str, out: Path | None, overwrite: bool, make_report: Callable[[], str]) -> int:
    """Make a benchmark's Markdown report, print it, and write it to ``out`` when given.

    ``out`` is checked before the work starts (an existing file needs ``overwrite``); bad input
    (:class:`PetflareInputError`) is one line on stderr naming the benchmark, and exit status 2.

    Returns:
        The exit status: 0, or 2 on bad input.
    """
    try:
        if out is not None:
            check_can_write(out, overwrite)
        text = make_report()
    except PetflareInputError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    print(text)
    if out is not None:
        atomic_write_text(out, text, overwrite=overwrite)
    return 0
