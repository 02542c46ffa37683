"""Study I/O: NIfTI reading/writing, validated study loading, dataset layouts and splits.

``petflare.io.dicom`` (DICOM import) is a separate module and is not imported here.
"""

from __future__ import annotations

from petflare.io.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    atomic_write_with,
    check_can_write,
)
from petflare.io.layouts import (
    load_autopet,
    load_manifest,
    load_nnunet_raw,
    manifest_to_studies,
    study_entry,
    write_manifest,
)
from petflare.io.loading import (
    load_ct_on_grid,
    load_study,
    resample_to_grid,
    same_grid,
    validate_mask,
)
from petflare.io.nifti import load_nifti, save_nifti
from petflare.io.splits import split_by_patient
from petflare.io.study import Study, StudyMeta

__all__ = [
    "Study",
    "StudyMeta",
    "atomic_directory",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_with",
    "check_can_write",
    "load_autopet",
    "load_ct_on_grid",
    "load_manifest",
    "load_nifti",
    "load_nnunet_raw",
    "load_study",
    "manifest_to_studies",
    "resample_to_grid",
    "same_grid",
    "save_nifti",
    "split_by_patient",
    "study_entry",
    "validate_mask",
    "write_manifest",
]
