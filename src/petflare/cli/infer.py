"""``petflare-infer`` / ``scripts/infer.py``: scans in; masks, report, pictures and pattern out.

Composes the Hydra config, builds a typed :class:`~petflare.inference.request.InferRequest` and
calls :func:`~petflare.inference.request.run_request`. Exit status: 0 on success; 2 on bad input
(one line naming the file, nothing written); 1 on an internal error, with the traceback in
``DIR/petflare-infer-error.log`` (the only file written then).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from pathlib import Path

from omegaconf import DictConfig

from petflare.cli._common import exit_on_bad_input, hydra_command
from petflare.errors import PetflareInputError
from petflare.inference.request import (
    InferRequest,
    check_inputs_exist,
    check_output_dir,
    request_from_config,
    run_request,
)

#: Name of the log file that holds the traceback of an internal error, inside ``out``.
ERROR_LOG = "petflare-infer-error.log"
#: Exit status of an internal (not user-input) error.
EXIT_INTERNAL_ERROR = 1


def _summary_line(request: InferRequest) -> str:
    """Final message: where the outputs are, and the pattern for a pair."""
    if request.mode == "batch":
        return f"petflare: done; one folder per manifest row in {request.out}"
    page = f" (open {request.out / 'report.html'})" if request.html else ""
    return f"petflare: done; outputs in {request.out}{page}"


@exit_on_bad_input
def infer(cfg: DictConfig) -> None:
    """The command body: validate, load the model, run, write; map internal errors to a log."""
    request = request_from_config(cfg)
    check_output_dir(request.out, request.overwrite, request.mode)
    check_inputs_exist(request)
    try:
        run_request(request)
    except PetflareInputError:
        raise
    except Exception:
        log = _write_error_log(request.out, traceback.format_exc())
        print(
            f"petflare: internal error: {sys.exc_info()[1]!r}; traceback in {log}",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL_ERROR)
    print(_summary_line(request), file=sys.stderr)


def _write_error_log(out: Path, text: str) -> Path:
    """Write the traceback into ``out`` (created if needed) and return the log path."""
    from petflare.io.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / ERROR_LOG, text, overwrite=True)


#: The documented option is ``model=DIR``, but ``model`` is also the training config group
#: (configs/model/), so Hydra would read ``model=...`` as a group choice. The entry point passes
#: it on as ``model_dir=`` (which may also be given directly).
_MODEL_ALIAS = ("model=", "model_dir=")


def alias_model_argument(argv: list[str]) -> list[str]:
    """Rewrite ``model=DIR`` to ``model_dir=DIR`` (see :data:`_MODEL_ALIAS`)."""
    old, new = _MODEL_ALIAS
    return [new + arg[len(old) :] if arg.startswith(old) else arg for arg in argv]


@hydra_command("infer")
def _hydra_main(cfg: DictConfig) -> None:
    infer(cfg)


def main() -> None:
    """Entry point of ``petflare-infer`` and ``scripts/infer.py`` (see ``--help``)."""
    sys.argv = [sys.argv[0], *alias_model_argument(sys.argv[1:])]
    # Library deprecation notices (MONAI's changing defaults) are for developers, not for the
    # physician reading this command's output; pytest and python -W still show them.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai(\.|$)")
    _hydra_main()
