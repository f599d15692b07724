"""One-file HTML reports: a study's grades and key images, and a training/evaluation run's figures.

Self-contained on purpose (images as data URIs, inline CSS, no script, no fonts or links to fetch): the file
is mailed, archived and opened on machines without network access, and must look the same there.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .. import DISCLAIMER, __version__, vocab
from ..files import atomic_write_text
from ..errors import SpinegradeError
from ..results import StudyResult, read_predictions
from .overlays import SEVERITY_RGB, KeyImage, key_images, why_no_key_images

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}
header .meta{color:#c5cad6;font-size:13px;margin-top:4px}
.disclaimer{background:#fff3cd;color:#5c4400;border-bottom:1px solid #e6d28a;padding:8px 24px;font-weight:600}
main{padding:8px 24px 32px}
section.study{background:#fff;border-radius:8px;padding:12px 20px 20px;margin:16px 0;
 box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{font-size:19px;margin:8px 0 12px}
h3{font-size:15px;margin:18px 0 8px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d6d9e0;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eceef2}
table.grades td{min-width:118px}
table.grades td b{display:block;font-size:14px}
table.grades .probs{font-size:11px;color:#333;white-space:nowrap}
table.grades .note{display:block;font-size:11px;color:#7a4a00}
.sev0{background:#d9f2dc}.sev1{background:#fff0b3}.sev2{background:#f9c9c9}.sevx{background:#e9e9e9}
.prior{font-style:italic}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:3px;font-size:12px}
.images{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#000;border-radius:6px;padding:4px}
figure img{display:block;max-width:100%;height:auto}
figcaption{color:#ddd;font-size:12px;padding:4px 2px 0}
.warn{color:#8a3b00}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;margin:0}
dl.kv dt{color:#5b6270}dl.kv dd{margin:0}
pre{background:#f0f1f4;padding:8px;overflow:auto;font-size:12px}
"""

_SEVERITY_SHORT = ("N/M", "Mod", "Sev")
UNCERTAIN_BELOW = 0.6  # a grade whose top probability is lower is shown as uncertain, not as a finding


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(title: str, body: str, head_extra: str = "") -> str:
    """A complete HTML page with the house style and the research-use line on top."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        # an empty icon: otherwise the browser asks the server for /favicon.ico and logs a 404
        f"<link rel=\"icon\" href=\"data:,\"><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style>{head_extra}</head><body>"
        f"<div class=\"disclaimer\" id=\"disclaimer\">{html.escape(DISCLAIMER)}</div>{body}</body></html>\n"
    )


def grade_table_html(result: StudyResult) -> str:
    """The 5 x 5 table: conditions down, levels across; each cell the grade, colour coded, and its probabilities."""
    head = "".join(f"<th>{vocab.LEVEL_NAMES[lv]}</th>" for lv in vocab.LEVELS)
    rows = []
    for c in vocab.CONDITIONS:
        cells = []
        for lv in vocab.LEVELS:
            try:
                f = result.finding(c, lv)
            except KeyError:
                cells.append('<td class="sevx">missing</td>')
                continue
            if f.source == "labels":
                if f.label is None:
                    cells.append('<td class="sevx"><b>no label</b></td>')
                else:
                    cells.append(f'<td class="sev{f.label}"><b>{vocab.SEVERITIES[f.label]}</b>'
                                 '<span class="probs">ground-truth label</span></td>')
                continue
            g = f.grade
            probs = " &middot; ".join(f"{s} {p:.2f}" for s, p in zip(_SEVERITY_SHORT, f.probs, strict=True))
            uncertain = f.source != "prior" and f.probs[g] < UNCERTAIN_BELOW
            # An uncertain grade is not coloured like a confident finding: grey, with the word said.
            cls = "sevx uncertain" if uncertain else f"sev{g}" + (" prior" if f.source == "prior" else "")
            note = (f'<span class="note">{html.escape(f.note or "prior: not localised")}</span>'
                    if f.source == "prior" else '')
            if uncertain:
                note += f'<span class="note">uncertain (top probability under {UNCERTAIN_BELOW:.0%})</span>'
            if f.model:
                note += f'<span class="note model">by {html.escape(f.model)}</span>'
            cells.append(f'<td class="{cls}" data-condition="{c}" data-level="{lv}">'
                         f'<b>{"? " if uncertain else ""}{vocab.SEVERITIES[g]} {f.probs[g]:.0%}</b>'
                         f'<span class="probs">{probs}</span>{note}</td>')
        rows.append(f"<tr><th>{html.escape(vocab.CONDITION_NAMES[c])}</th>{''.join(cells)}</tr>")
    legend = "".join(
        f'<span style="background:rgb{SEVERITY_RGB[i]}">{name}</span>' for i, name in enumerate(vocab.SEVERITIES))
    return (f'<table class="grades"><thead><tr><th>Condition</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table><p class="legend">{legend} '
            '(grade with the highest probability; N/M = Normal/Mild; grey with "?" = uncertain)</p>')


def observations_html(result: StudyResult) -> str:
    """Findings outside the 25 grades (e.g. canal stenosis yes/no learned from another cohort), each with its
    model and what it is, or '' where there are none."""
    if not result.observations:
        return ""
    rows = "".join(
        f'<tr data-observation="{html.escape(o.name)}" data-level="{html.escape(o.level)}">'
        f'<td>{html.escape(o.name.replace("_", " "))}</td><td>{html.escape(vocab.LEVEL_NAMES[o.level])}</td>'
        f'<td>{o.probability:.0%}</td><td>{html.escape(o.model)}</td></tr>' for o in result.observations)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in dict.fromkeys(o.note for o in result.observations
                                                                                  if o.note))
    return ('<h3>Other findings (not graded on the RSNA scale)</h3><table class="observations"><thead><tr>'
            '<th>Finding</th><th>Level</th><th>Probability</th><th>Model</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>{notes}')


def series_table_html(result: StudyResult) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s.series_id)}</td><td>{html.escape(vocab.ROLE_DESCRIPTIONS.get(s.role, s.role))}</td>"
        f"<td>{s.n_slices}</td><td>{html.escape(', '.join(s.used_for)) or '&ndash;'}</td>"
        f"<td>{html.escape(s.role_reason)}</td></tr>" for s in result.series)
    return ("<table><thead><tr><th>Series</th><th>Role</th><th>Slices</th><th>Used for</th><th>Why this role</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")


def figures_html(images: Iterable[KeyImage]) -> str:
    figs = "".join(
        f'<figure data-key="{img.key}"><img src="{data_uri(img.png)}" width="{img.size[0]}" height="{img.size[1]}" '
        f'alt="{html.escape(img.title)}"><figcaption>{html.escape(img.title)}, series {html.escape(img.series_id)}, '
        f'image {img.instance_number}</figcaption></figure>' for img in images)
    return f'<div class="images">{figs}</div>'


def _kv(items: Mapping) -> str:
    rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                   for k, v in items.items() if isinstance(v, (str, int, float, bool)) and v != "")
    return f'<dl class="kv">{rows}</dl>'


def study_section_html(result: StudyResult, images: list[KeyImage], model: Mapping, notes: list[str]) -> str:
    """One study: meta, the grade table, series used, key images and any warnings."""
    source = "ground-truth labels" if result.findings and all(f.source == "labels" for f in result.findings) \
        else "model predictions"
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in dict.fromkeys([*result.warnings, *notes]))
    imgs = figures_html(images) if images else '<p class="warn">No key images.</p>'
    return (f'<section class="study" id="study-{html.escape(result.study_id)}">'
            f'<h2>Study {html.escape(result.study_id)} <small>({source})</small></h2>'
            f'{_kv(model)}<h3>Grades</h3>{grade_table_html(result)}{observations_html(result)}{warn}'
            f'<h3>Key images</h3>{imgs}<h3>Series used</h3>{series_table_html(result)}</section>')


def _load_study(result: StudyResult):
    """Read the study's images for the key images, with the series roles the prediction used."""
    from ..io.dicom import load_study

    study = load_study(result.path)
    roles = {s.series_id: s.role for s in result.series}
    for s in study.series:
        s.role = roles.get(s.series_id, s.role)
    return study


def write_report(predictions, out_html: str | Path | None = None, *, model: Mapping | None = None,
                 studies: Mapping[str, object] | None = None,
                 images: Mapping[str, list[KeyImage]] | None = None) -> Path:
    """Write the study report HTML; returns its path.

    `predictions`: a predictions folder or predictions.json, or a list of `StudyResult`. `out_html` defaults
    to report.html beside predictions.json. `studies` maps study id to an already loaded `Study` (with
    pixels) so callers that have one avoid a second read; other studies are read from `StudyResult.path`.
    `images` maps study id to its key images (all conditions) where a caller has drawn them already.
    """
    if isinstance(predictions, (str, Path)):
        doc, results = read_predictions(Path(predictions))
        where = Path(predictions) if Path(predictions).is_dir() else Path(predictions).parent
        out = Path(out_html) if out_html is not None else where / "report.html"
    else:
        if out_html is None:
            raise ValueError("out_html is needed when predictions are given as results")
        doc, results, out = {}, list(predictions), Path(out_html)
    model = dict(model if model is not None else doc.get("model") or {})
    created = doc.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sections = []
    for r in results:
        notes: list[str] = []
        drawn: list[KeyImage] = list((images or {}).get(r.study_id, []))
        try:
            if not drawn:
                drawn = key_images((studies or {}).get(r.study_id) or _load_study(r), r)
        except Exception as e:  # noqa: BLE001 - a drawing bug costs this study's images, not the whole report
            notes.append(why_no_key_images(e))
        sections.append(study_section_html(r, drawn, model, notes))
    failed = "".join(f'<p class="warn">Study {html.escape(str(f.get("study_id", "?")))} failed: '
                     f'{html.escape(str(f.get("error", "")))}</p>' for f in doc.get("failed", []))
    n = len(results)
    header = (f'<header><h1>Lumbar spine grading report</h1><div class="meta">{n} stud{"y" if n == 1 else "ies"}'
              f' &middot; created {html.escape(created)} &middot; spinegrade {html.escape(__version__)}'
              f' &middot; model {html.escape(str(model.get("name", "unknown")))}'
              f' {html.escape(str(model.get("version", "")))}</div></header>')
    atomic_write_text(out, page("spinegrade report", f"{header}<main>{failed}{''.join(sections)}</main>"))
    return out


# --- run report ----------------------------------------------------------------------------------------

def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(d, Mapping):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}{k}.")]
    if isinstance(d, (list, tuple)) and len(d) > 8:  # curves and per-sample values: the figures show them
        return [(prefix[:-1], f"[{len(d)} values]")]
    return [(prefix[:-1], d)]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_run_report(run_dir: str | Path, out_html: str | Path | None = None) -> Path:
    """Collect a training/evaluation run's figures (*.png) and metrics.json into one HTML file; returns its path.

    Figures are found anywhere under the run folder (confusion matrices, reliability diagrams, curves), grouped
    by sub-folder. `out_html` defaults to `<run_dir>/report.html`.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise SpinegradeError(f"{run}: run folder not found")
    out = Path(out_html) if out_html is not None else run / "report.html"
    pngs = sorted(p for p in run.rglob("*.png") if not any(part.startswith(".") for part in p.relative_to(run).parts))
    parts = []
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as e:
            raise SpinegradeError(f"{metrics_path}: not valid JSON ({e})") from None
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in _flatten(metrics))
        parts.append(f"<h3>Metrics</h3><table><tbody>{rows}</tbody></table>")
    groups: dict[str, list[Path]] = {}
    for p in pngs:
        groups.setdefault(str(p.parent.relative_to(run)), []).append(p)
    for folder, files in groups.items():
        figs = "".join(f'<figure><img src="{data_uri(p.read_bytes())}" alt="{html.escape(p.stem)}">'
                       f'<figcaption>{html.escape(str(p.relative_to(run)))}</figcaption></figure>' for p in files)
        title = "Figures" if folder == "." else f"Figures: {html.escape(folder)}"
        parts.append(f'<h3>{title}</h3><div class="images">{figs}</div>')
    config = run / "config.json"
    if config.is_file():
        parts.append(f"<h3>Configuration</h3><details><summary>config.json</summary>"
                     f"<pre>{html.escape(config.read_text())}</pre></details>")
    if not parts:
        parts.append('<p class="warn">No metrics.json and no figures found in this run folder.</p>')
    header = (f'<header><h1>Run report: {html.escape(run.resolve().name)}</h1><div class="meta">'
              f'written {time.strftime("%Y-%m-%dT%H:%M:%S%z")} &middot; spinegrade {__version__}</div></header>')
    body = f'{header}<main><section class="study">{"".join(parts)}</section></main>'
    atomic_write_text(out, page(f"run report {run.name}", body))
    return out
