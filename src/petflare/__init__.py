"""petflare: oncologic FDG-PET lesion segmentation and temporal change-pattern classification."""

from __future__ import annotations

__version__ = "0.1.0"
