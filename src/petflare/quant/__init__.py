"""Quantification and response: lesion instances, SUV metrics, matching, PERCIST/EORTC/Choi.

Contract API (docs/dev_contracts.md): :func:`lesion_instances`, :func:`analyze_study`,
:func:`compare_studies` (-> :class:`PairReport` with ``to_json()`` and a per-lesion CSV writer)
and :func:`classify_pattern_rules` (-> :class:`RuleDecision`).
"""

from __future__ import annotations

from petflare.quant.analysis import analyze_study, compare_studies
from petflare.quant.change import NoduleCriteria
from petflare.quant.focal_uptake import FocalUptakeCriteria, find_new_focal_uptake
from petflare.quant.instances import lesion_instances
from petflare.quant.matching import MatchingConfig
from petflare.quant.metrics import SUV_PEAK_RADIUS_MM, lean_body_mass_kg, suv_peak
from petflare.quant.reference import LiverSearchConfig, liver_reference
from petflare.quant.registration import RegistrationConfig, register_followup_to_baseline
from petflare.quant.report import (
    SCHEMA_VERSION,
    LesionMetrics,
    LiverReference,
    NewFocalUptake,
    PairReport,
    RuleDecision,
    ScanReport,
    pair_report_from_json,
    scan_report_from_json,
    write_lesion_csv,
)
from petflare.quant.rules import RuleThresholds, classify_pattern_rules

__all__ = [
    "SCHEMA_VERSION",
    "SUV_PEAK_RADIUS_MM",
    "FocalUptakeCriteria",
    "LesionMetrics",
    "LiverReference",
    "LiverSearchConfig",
    "MatchingConfig",
    "NewFocalUptake",
    "NoduleCriteria",
    "PairReport",
    "RegistrationConfig",
    "RuleDecision",
    "RuleThresholds",
    "ScanReport",
    "analyze_study",
    "classify_pattern_rules",
    "compare_studies",
    "find_new_focal_uptake",
    "lean_body_mass_kg",
    "lesion_instances",
    "liver_reference",
    "pair_report_from_json",
    "register_followup_to_baseline",
    "scan_report_from_json",
    "suv_peak",
    "write_lesion_csv",
]
