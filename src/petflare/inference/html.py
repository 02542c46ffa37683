"""report.html: one self-contained page a physician can open (no network, images embedded).

The page is rendered from the report.json content alone (plus the MIP picture), so what the page
shows and what the JSON says cannot disagree. Every value is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from petflare.constants import PATTERNS
from petflare.io.atomic import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px;
color:#1b1f24;background:#fff;max-width:1200px}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.15em;margin:28px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}
.notice{background:#fff4ce;border:2px solid #d4a72c;padding:10px 14px;border-radius:6px;
font-weight:600;margin:12px 0}
.pattern{font-size:1.4em;font-weight:700} .muted{color:#57606a}
table{border-collapse:collapse;margin:6px 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.new td{background:#fde8e8} tr.resolved td{background:#e8f0fe}
img.mip{max-width:100%;border:1px solid #d0d7de}
h3{font-size:1em;margin:14px 0 4px} details{margin:8px 0} summary{cursor:pointer}
"""

#: Lesion table columns: (header, key in the lesion dict, number format or None).
_LESION_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("volume (ml)", "volume_ml", ".2f"),
    ("SUVmax", "suv_max", ".2f"),
    ("SUVpeak", "suv_peak", ".2f"),
    ("SUVmean", "suv_mean", ".2f"),
    ("TLG", "tlg", ".1f"),
    ("longest diam. (mm)", "longest_diameter_mm", ".1f"),
    ("HU mean", "hu_mean", ".0f"),
)


def render_report_html(report: Mapping[str, Any], mip_png: bytes | None = None) -> str:
    """Return the full HTML page for a report.json dict and the mip.png bytes."""
    title = "petflare report" + (f": {report['patient_id']}" if report.get("patient_id") else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="notice" id="notice">{_e(report.get("notice", ""))}</div>',
        _pattern_section(report),
        _criteria_section(report),
        _mip_section(mip_png),
        _summary_section(report),
        _lesion_section(report),
        _registration_section(report),
        _model_section(report),
        _timings_section(report),
        _inputs_section(report),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report_html(
    report: Mapping[str, Any],
    path: str | Path,
    mip_png: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write report.html atomically (an existing file is refused unless ``overwrite``)."""
    return atomic_write_text(path, render_report_html(report, mip_png), overwrite=overwrite)


# --------------------------------------------------------------------------- sections


def _pattern_section(report: Mapping[str, Any]) -> str:
    pattern = report.get("pattern")
    if not pattern:
        return (
            "<h2>Change pattern</h2><p class='muted'>Single scan: no change pattern "
            "(it needs a baseline and a follow-up).</p>"
        )
    source = pattern.get("source")
    out = ["<h2>Change pattern</h2>", f'<p class="pattern" id="pattern">{_e(pattern["label"])}']
    probabilities = pattern.get("probabilities")
    if probabilities:
        p_label = _num(probabilities[pattern["label"]])
        out.append(f' &nbsp;<span class="muted">p = {p_label}</span>')
    out.append("</p>")
    if source == "learned_head":
        out.append("<p>Source: learned pattern head (calibrated probabilities).</p>")
        out.append(
            _table(["pattern", "probability"], [[p, _num(probabilities[p])] for p in PATTERNS])
        )
    else:
        out.append(
            "<p>Source: <b>rule-based classifier</b> (rules; no probabilities: the learned "
            "head was not used).</p>"
        )
    if pattern.get("rule"):
        out.append(f"<p>Rule: <code>{_e(pattern['rule'])}</code></p>")
    items = _evidence_items(pattern.get("evidence"))
    if items:
        out.append("<p>Evidence:</p><ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")
    return "".join(out)


def _evidence_items(evidence: Any) -> list[str]:
    """Evidence as sentences: a list as is; the learned head's dict by its ``explanations``."""
    if not evidence:
        return []
    if isinstance(evidence, Mapping):
        if evidence.get("explanations"):
            return [str(e) for e in evidence["explanations"]]
        return [f"{k}: {v}" for k, v in evidence.items()]
    if isinstance(evidence, (list, tuple)):
        return [str(e) for e in evidence]
    return [str(evidence)]


def _criteria_section(report: Mapping[str, Any]) -> str:
    """A summary row per criterion, then every input each category depends on, with its unit."""
    percist, eortc, choi = report.get("percist"), report.get("eortc"), report.get("choi")
    rows = []
    details = []
    if percist:
        unit = percist.get("unit", "SUV")
        rows.append(
            [
                "PERCIST 1.0",
                _category(percist),
                f"hottest-lesion {unit}peak {_num(percist.get('baseline_peak'))} -> "
                f"{_num(percist.get('followup_peak'))} ({_pct(percist.get('change_pct'))}); "
                f"new lesions {percist.get('new_lesions')}",
                "; ".join(percist.get("drivers") or []),
            ]
        )
        details.append(_criterion_details("PERCIST 1.0", percist, _percist_inputs(percist)))
    if eortc:
        rows.append(
            [
                "EORTC 1999",
                _category(eortc),
                f"SUVmax {_num(eortc.get('baseline_suv_max'))} -> "
                f"{_num(eortc.get('followup_suv_max'))} ({_pct(eortc.get('change_pct'))}); "
                f"new lesions {eortc.get('new_lesions')}",
                "; ".join(eortc.get("drivers") or []),
            ]
        )
        details.append(_criterion_details("EORTC 1999", eortc, _eortc_inputs(eortc)))
    if choi:
        density = (
            _pct(choi.get("density_change_pct"))
            if choi.get("density_assessable")
            else "not assessable"
        )
        rows.append(
            [
                "Choi (GIST, CT)",
                _category(choi),
                f"size {_pct(choi.get('size_change_pct'))}, density {density}; "
                f"new lesions {choi.get('new_lesions')}, "
                f"new intratumoural nodules {choi.get('new_intratumoural_nodules')}"
                + (f" ({choi['category_basis']})" if choi.get("category_basis") else ""),
                "; ".join(choi.get("drivers") or []),
            ]
        )
        details.append(_criterion_details("Choi (GIST, CT)", choi, _choi_inputs(choi)))
    if not rows:
        return ""
    out = ["<h2>Response criteria</h2>"]
    out.append(
        _table(["criteria", "category", "measurements", "driven by"], rows, table_id="criteria")
    )
    disagreements = report.get("criteria_evidence") or []
    if disagreements:
        out.append(
            '<p>Pattern and criteria disagree:</p><ul id="criteria-evidence">'
            + "".join(f"<li>{_e(line)}</li>" for line in disagreements)
            + "</ul>"
        )
    out.append("<details open><summary>Every input of each criterion</summary>")
    out += details
    out.append("</details>")
    return "".join(out)


def _category(result: Mapping[str, Any]) -> str:
    if result.get("applicable") is False:
        return "not applicable (no CT on both scans)"
    category = result.get("category")
    if category == "NE":
        reason = result.get("not_assessable_reason")
        return "NE (not assessable" + (f": {reason})" if reason else ")")
    return "n/a" if category is None else str(category)


def _criterion_details(
    name: str, result: Mapping[str, Any], inputs: Sequence[tuple[str, str]]
) -> str:
    rows = [[k, v] for k, v in inputs]
    rows.append(["driven by", "; ".join(result.get("drivers") or []) or "n/a"])
    rows.append(["notes", "; ".join(result.get("notes") or []) or "none"])
    return f"<h3>{_e(name)}: {_e(_category(result))}</h3>" + _table(["input", "value"], rows)


def _ids(ids: Any) -> str:
    return ", ".join(str(i) for i in ids or []) or "none"


def _counted(count: Any, ids: Any, what: str = "follow-up lesion") -> str:
    """``2 (follow-up lesions 3, 5)``, or the bare count without ids."""
    return f"{count} ({what}s {_ids(ids)})" if ids else str(count)


def _minutes(value: Any) -> str:
    return "unknown" if value is None else f"{value:.0f} min"


def _percist_inputs(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    unit = p.get("unit", "SUV")
    measurable = p.get("measurable_baseline")
    threshold = p.get("measurability_threshold")
    return [
        ("normalisation", p.get("normalisation") or unit),
        (
            f"hottest baseline lesion ({unit}peak)",
            f"lesion {p.get('baseline_lesion_id') or '-'}: {_num(p.get('baseline_peak'))}",
        ),
        (
            f"hottest follow-up lesion ({unit}peak)",
            f"lesion {p.get('followup_lesion_id') or '-'}: {_num(p.get('followup_peak'))}",
        ),
        (
            "change",
            f"{_pct(p.get('change_pct'))}, {_signed(p.get('change_abs'))} {unit} "
            f"(PMR <= -30% and <= -0.8; PMD > +30% and > +0.8)",
        ),
        (
            f"liver reference, baseline ({unit})",
            f"mean {_num(p.get('liver_mean_baseline'))}, SD {_num(p.get('liver_sd_baseline'))}",
        ),
        (f"liver reference, follow-up ({unit})", f"mean {_num(p.get('liver_mean_followup'))}"),
        (
            f"measurability threshold ({unit})",
            "n/a (no liver reference)"
            if threshold is None
            else f"1.5 x liver mean + 2 SD = {_num(threshold)}; baseline hottest "
            + ("above it (measurable)" if measurable else "not above it (not measurable)"),
        ),
        ("total TLG change", f"{_pct(p.get('tlg_change_pct'))} (PMD > +75%)"),
        (
            "uptake times",
            f"baseline {_minutes(p.get('uptake_time_min_baseline'))}, follow-up "
            f"{_minutes(p.get('uptake_time_min_followup'))} (tolerance 15 min)",
        ),
        ("new lesions", _counted(p.get("new_lesions"), p.get("new_lesion_ids"))),
    ]


def _eortc_inputs(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    one_cycle = r.get("after_one_cycle")
    return [
        ("normalisation", "SUVbw (body-weight SUV)"),
        (
            "hottest baseline lesion (SUVmax)",
            f"lesion {r.get('baseline_lesion_id') or '-'}: {_num(r.get('baseline_suv_max'))}",
        ),
        (
            "hottest follow-up lesion (SUVmax)",
            f"lesion {r.get('followup_lesion_id') or '-'}: {_num(r.get('followup_suv_max'))}",
        ),
        (
            "change",
            f"{_pct(r.get('change_pct'))} (PMR "
            + ("<= -15%, after one cycle" if one_cycle else "< -25%")
            + "; PMD > +25%)",
        ),
        (
            "largest longest-diameter increase",
            f"{_pct(r.get('longest_diameter_change_pct'))} (follow-up lesion "
            f"{r.get('longest_diameter_lesion_id') or '-'}; PMD > +20%)",
        ),
        ("uptake time difference", _minutes(r.get("uptake_time_difference_min"))),
        ("new lesions", _counted(r.get("new_lesions"), r.get("new_lesion_ids"))),
    ]


def _choi_inputs(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    if c.get("density_assessable"):
        density = (
            f"{_num(c.get('density_baseline_hu'), '.0f')} -> "
            f"{_num(c.get('density_followup_hu'), '.0f')} HU "
            f"({_pct(c.get('density_change_pct'))}; PR <= -15%)"
        )
    else:
        density = c.get("density_reason") or "not assessable"
        if c.get("density_baseline_hu") is not None:
            density += (
                f" (mean {_num(c.get('density_baseline_hu'), '.0f')} -> "
                f"{_num(c.get('density_followup_hu'), '.0f')} HU)"
            )
    return [
        ("CT contrast (ct_contrast)", str(c.get("ct_contrast", "unknown"))),
        ("category from", c.get("category_basis") or "n/a"),
        (
            "target lesions (baseline -> follow-up)",
            f"{_ids(c.get('target_lesion_ids'))} -> {_ids(c.get('followup_target_ids'))}",
        ),
        (
            "size (sum of longest diameters)",
            f"{_num(c.get('size_baseline_mm'), '.0f')} -> "
            f"{_num(c.get('size_followup_mm'), '.0f')} mm "
            f"({_pct(c.get('size_change_pct'))}; PR <= -10%, PD >= +10%)",
        ),
        (f"density (targets {_ids(c.get('density_lesion_ids'))})", density),
        ("new lesions", _counted(c.get("new_lesions"), c.get("new_lesion_ids"))),
        (
            "new intratumoural nodules",
            _counted(c.get("new_intratumoural_nodules"), c.get("nodule_lesion_ids")),
        ),
    ]


def _mip_section(mip_png: bytes | None) -> str:
    if not mip_png:
        return ""
    data = base64.b64encode(mip_png).decode("ascii")
    return (
        "<h2>Maximum-intensity projections</h2>"
        f'<img class="mip" id="mip" alt="PET maximum-intensity projections with lesion contours" '
        f'src="data:image/png;base64,{data}">'
    )


def _summary_section(report: Mapping[str, Any]) -> str:
    rows = []
    for name, scan in (report.get("timepoints") or {}).items():
        liver = scan.get("liver") or {}
        factor = scan.get("sul_factor")
        if liver.get("found"):
            liver_text = (
                f"SUVmean {_num(liver.get('suv_mean'))} (SD {_num(liver.get('suv_sd'))}), "
                f"{liver.get('method', '')}"
            )
            if isinstance(factor, (int, float)) and isinstance(liver.get("suv_mean"), float):
                liver_text += (
                    f"; SULmean {_num(liver['suv_mean'] * factor)} "
                    f"(SD {_num((liver.get('suv_sd') or 0.0) * factor)})"
                )
        else:
            liver_text = f"not measured: {liver.get('reason', 'unknown')}"
        rows.append(
            [
                name,
                scan.get("n_lesions"),
                _num(scan.get("total_mtv_ml")),
                _num(scan.get("total_tlg"), ".1f"),
                _num(scan.get("hottest_suv_peak")),
                scan.get("hottest_lesion_id"),
                liver_text,
                _num(factor, ".3f") if factor is not None else scan.get("sul_reason") or "n/a",
            ]
        )
    return "<h2>Per scan</h2>" + _table(
        [
            "timepoint",
            "lesions",
            "total MTV (ml)",
            "total TLG",
            "hottest SUVpeak",
            "hottest lesion",
            "liver reference",
            "SUL factor (LBM / weight)",
        ],
        rows,
    )


def _lesion_section(report: Mapping[str, Any]) -> str:
    status = {
        (m["timepoint"], m["lesion_id"]): m for m in report.get("matches") or [] if "timepoint" in m
    }
    changes = {c["followup_id"]: c for c in report.get("changes") or []}
    header = ["timepoint", "id", "status", "matched"] + [c[0] for c in _LESION_COLUMNS]
    with_sul = any(
        lesion.get("sul_peak") is not None
        for scan in (report.get("timepoints") or {}).values()
        for lesion in scan.get("lesions") or []
    )
    header += ["SULpeak"] if with_sul else []
    header += ["focal ratio", "SUVpeak change"]
    rows: list[list[Any]] = []
    classes: list[str] = []
    for name, scan in (report.get("timepoints") or {}).items():
        for lesion in scan.get("lesions") or []:
            match = status.get((name, lesion["lesion_id"]), {})
            change = changes.get(lesion["lesion_id"]) if name == "followup" else None
            focality = lesion.get("focality") or {}
            row = [
                name,
                lesion["lesion_id"],
                match.get("status", ""),
                ", ".join(str(i) for i in match.get("matched_ids") or []),
            ]
            row += [_num(lesion.get(key), fmt) for _, key, fmt in _LESION_COLUMNS]
            row += [_num(lesion.get("sul_peak"))] if with_sul else []
            row += [
                _num(focality.get("ratio")),
                _pct(change.get("suv_peak_change_pct")) if change else "",
            ]
            rows.append(row)
            classes.append(str(match.get("status", "")))
    if not rows:
        return "<h2>Lesions</h2><p>No lesion was segmented.</p>"
    return "<h2>Lesions</h2>" + _table(header, rows, table_id="lesions", row_classes=classes)


def _registration_section(report: Mapping[str, Any]) -> str:
    reg = report.get("registration")
    if not reg:
        return ""
    return "<h2>Alignment (follow-up to baseline)</h2>" + _table(
        ["method", "modality", "translation (mm)", "rotation (deg)", "NCC before", "NCC after"],
        [
            [
                reg.get("method"),
                reg.get("modality"),
                ", ".join(_num(v, ".1f") for v in reg.get("translation_mm") or []),
                ", ".join(_num(v, ".1f") for v in reg.get("rotation_deg") or []),
                _num(reg.get("ncc_before"), ".3f"),
                _num(reg.get("ncc_after"), ".3f"),
            ]
        ],
    )


def _model_section(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    rows = [[k, v if isinstance(v, str) else _e_json(v)] for k, v in model.items() if v is not None]
    software = report.get("software") or {}
    rows += [[f"software: {k}", v] for k, v in software.items()]
    return "<h2>Model</h2>" + _table(["field", "value"], rows, table_id="model")


def _timings_section(report: Mapping[str, Any]) -> str:
    timings = report.get("timings_s") or {}
    rows = [[k, _num(v, ".2f")] for k, v in timings.items()]
    rows.append(["total (stages above)", _num(sum(timings.values()), ".2f")])
    return "<h2>Timings (seconds)</h2>" + _table(["stage", "s"], rows, table_id="timings")


def _inputs_section(report: Mapping[str, Any]) -> str:
    rows = []
    for name, src in (report.get("inputs") or {}).items():
        if src:
            rows.append([name, src.get("format"), src.get("pet"), src.get("ct") or ""])
    if not rows:
        return ""
    return "<h2>Inputs</h2>" + _table(["timepoint", "format", "PET", "CT"], rows)


# --------------------------------------------------------------------------- helpers


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    table_id: str | None = None,
    row_classes: Sequence[str] | None = None,
) -> str:
    id_attr = f' id="{_e(table_id)}"' if table_id else ""
    out = [f"<table{id_attr}><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def _e_json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _num(value: Any, fmt: str | None = ".2f") -> str:
    """A number in ``fmt``; ``n/a`` for a missing or non-finite one (never nan or inf)."""
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, (int, float)) and fmt:
        return format(value, fmt)
    return str(value)


def _signed(value: Any) -> str:
    return _num(value, "+.2f")


#: Percent changes beyond this are shown as a fold change: "+2400%" reads worse than "x25".
_MAX_PCT_SHOWN = 1000.0


def _pct(value: Any) -> str:
    """A percent change; a rise beyond 1000% as its fold (x25.0), never nan, inf or > 1000%."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    if value > _MAX_PCT_SHOWN:
        return f"x{1.0 + value / 100.0:.1f}"
    if value < -_MAX_PCT_SHOWN:  # only a negative or near-zero baseline gives this
        return "n/a"
    return f"{value:+.1f}%"
