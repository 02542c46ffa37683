"""Where the package's own files live: the Hydra config folder and the shipped model folders."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> str:
    """Absolute path of the Hydra config folder.

    In a source checkout (editable install) this is the repository's ``configs/``; in an
    installed wheel it is the copy packaged as ``petflare/configs``.
    """
    here = Path(__file__).resolve()
    packaged = here.parent / "configs"
    if packaged.is_dir():
        return str(packaged)
    repo = here.parents[2] / "configs"
    if repo.is_dir():
        return str(repo)
    raise FileNotFoundError(f"petflare configs not found (looked in {packaged} and {repo})")


def models_dir() -> Path:
    """The ``models/`` folder next to the ``configs/`` folder (where shipped model folders live)."""
    return project_dir() / "models"


def project_dir() -> Path:
    """The folder holding ``configs/`` and ``models/`` (the repository root in a checkout)."""
    return Path(config_dir()).parent


def real_data_dir() -> Path:
    """The real FDG-PET folder the tests and benchmarks read in place (never copied in).

    ``$PETFLARE_REAL_DATA`` when set, else ``shared/data/real`` beside the project folder (where
    the development machines and CI keep it); callers skip with a reason when it is absent.
    """
    env = os.environ.get("PETFLARE_REAL_DATA")
    if env:
        return Path(env)
    return project_dir().parent / "shared" / "data" / "real"
