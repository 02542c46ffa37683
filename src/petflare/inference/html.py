"""report.html: one self-contained page a physician can open (no network, images embedded).

The page is rendered from the report.json content alone (plus the MIP picture), so what the page
shows and what the JSON says cannot disagree. Every value is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
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
    rows = []
    percist = report.get("percist")
    if percist:
        rows.append(
            [
                "PERCIST 1.0",
                percist.get("category"),
                f"hottest-lesion {percist.get('unit', 'SUV')}peak "
                f"{_num(percist.get('baseline_peak'))} -> {_num(percist.get('followup_peak'))} "
                f"({_pct(percist.get('change_pct'))}); TLG {_pct(percist.get('tlg_change_pct'))}; "
                f"new lesions {percist.get('new_lesions')}",
                "; ".join(percist.get("notes") or []),
            ]
        )
    eortc = report.get("eortc")
    if eortc:
        rows.append(
            [
                "EORTC 1999",
                eortc.get("category"),
                f"SUVmax {_num(eortc.get('baseline_suv_max'))} -> "
                f"{_num(eortc.get('followup_suv_max'))} ({_pct(eortc.get('change_pct'))}); "
                f"new lesions {eortc.get('new_lesions')}",
                "; ".join(eortc.get("notes") or []),
            ]
        )
    choi = report.get("choi")
    if choi:
        rows.append(
            [
                "Choi (GIST, CT)",
                choi.get("category") if choi.get("applicable") else "not applicable",
                f"size {_pct(choi.get('size_change_pct'))}, density "
                f"{_pct(choi.get('density_change_pct'))}; new lesions {choi.get('new_lesions')}, "
                f"new intratumoural nodules {choi.get('new_intratumoural_nodules')}",
                "; ".join(choi.get("notes") or []),
            ]
        )
    if not rows:
        return ""
    return "<h2>Response criteria</h2>" + _table(
        ["criteria", "category", "measurements", "notes"], rows, table_id="criteria"
    )


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
        if liver.get("found"):
            liver_text = (
                f"SUVmean {_num(liver.get('suv_mean'))} (SD {_num(liver.get('suv_sd'))}), "
                f"{liver.get('method', '')}"
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
        ],
        rows,
    )


def _lesion_section(report: Mapping[str, Any]) -> str:
    status = {
        (m["timepoint"], m["lesion_id"]): m for m in report.get("matches") or [] if "timepoint" in m
    }
    changes = {c["followup_id"]: c for c in report.get("changes") or []}
    header = ["timepoint", "id", "status", "matched"] + [c[0] for c in _LESION_COLUMNS]
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
    if value is None or value == "":
        return "n/a"
    if isinstance(value, (int, float)) and fmt:
        return format(value, fmt)
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"
