"""Keys and class registry shared across petflare, so no string is spelled twice."""

from __future__ import annotations

from typing import Final


class Keys:
    """Dictionary keys used in datalists, MONAI transform dictionaries and reports."""

    PATIENT_ID: Final = "patient_id"
    STUDY_ID: Final = "study_id"
    PET: Final = "pet"
    CT: Final = "ct"
    LABEL: Final = "label"
    ORGANS: Final = "organs"  # organ label map (values index ORGANS; ORGAN_IGNORE = unknown)
    IMAGE: Final = "image"
    PATTERN: Final = "pattern"
    SPLIT: Final = "split"

    BASELINE_PET: Final = "baseline_pet"
    BASELINE_CT: Final = "baseline_ct"
    BASELINE_MASK: Final = "baseline_mask"
    FOLLOWUP_PET: Final = "followup_pet"
    FOLLOWUP_CT: Final = "followup_ct"
    FOLLOWUP_MASK: Final = "followup_mask"

    #: Manifest columns of the per-timepoint organ label maps (optional; phantom sets write them).
    BASELINE_ORGANS: Final = "baseline_organs"
    FOLLOWUP_ORGANS: Final = "followup_organs"


#: Columns of the longitudinal manifest CSV that hold file paths (PET, CT, mask per timepoint).
MANIFEST_PATH_COLUMNS: Final = (
    Keys.BASELINE_PET,
    Keys.BASELINE_CT,
    Keys.BASELINE_MASK,
    Keys.FOLLOWUP_PET,
    Keys.FOLLOWUP_CT,
    Keys.FOLLOWUP_MASK,
)

#: Optional manifest columns holding organ label maps (phantom sets write them); paths like the
#: others, but not part of what identifies a pair (not in ``MANIFEST_PATH_COLUMNS``).
MANIFEST_ORGAN_COLUMNS: Final = (Keys.BASELINE_ORGANS, Keys.FOLLOWUP_ORGANS)

#: Columns of the longitudinal manifest CSV, in order.
MANIFEST_COLUMNS: Final = (
    Keys.PATIENT_ID,
    *MANIFEST_PATH_COLUMNS,
    Keys.PATTERN,
    Keys.SPLIT,
    *MANIFEST_ORGAN_COLUMNS,
)

#: The four temporal change patterns, in the fixed class-index order used by every model.
PATTERNS: Final = ("controlled", "diffuse_flare", "nodule_within_mass", "new_lesions")
PATTERN_TO_INDEX: Final = {name: i for i, name in enumerate(PATTERNS)}

#: Split names.
SPLITS: Final = ("train", "val", "test")

#: Timepoint names used in reports and output file names.
TIMEPOINTS: Final = ("baseline", "followup")

#: F-18 physical half-life in seconds (DOMAIN.md: 6586-6588 s).
F18_HALF_LIFE_S: Final = 6588.0

#: Largest plausible SUV in a clinical FDG scan; values far above it suggest Bq/mL, not SUV.
MAX_PLAUSIBLE_SUV: Final = 200.0

#: Physiological-uptake sites the anatomy-aware network learns (auxiliary organ output) and the
#: reports name as a lesion's site; index 0 is everything else (body, air, disease).
#: "kidney" includes the renal pelvis and ureters; "head_neck" the tonsils, salivary glands and
#: vocal cords; "other_physiological" brown fat, active muscle, joints and injection sites.
ORGANS: Final = (
    "background",
    "brain",
    "myocardium",
    "liver",
    "kidney",
    "bladder",
    "bowel",
    "head_neck",
    "other_physiological",
)
ORGAN_TO_INDEX: Final = {name: i for i, name in enumerate(ORGANS)}

#: Sites whose FDG uptake is physiological almost always (brain, heart muscle, urine in the
#: kidneys and bladder): the organ-aware filter removes predicted lesions that lie there.
#: Liver, bowel and the head-and-neck glands are left alone: disease arises there too (GIST:
#: liver metastases, bowel primaries; head-and-neck cancer in the tonsils).
PHYSIOLOGICAL_SITES: Final = ("brain", "myocardium", "kidney", "bladder")

#: Value of "known disease" (visible tumour and nodes, e.g. an RTSTRUCT GTV) in the region maps
#: of real scans (annotations/real/<case>/regions.nii.gz), beside the ORGAN_TO_INDEX values; kept
#: apart from the organ indices so that adding an organ never changes its meaning.
KNOWN_DISEASE_LABEL: Final = 100

#: Organ-label value of voxels whose organ is not known (e.g. a real background without an
#: annotation there): the organ loss ignores them.
ORGAN_IGNORE: Final = 255
