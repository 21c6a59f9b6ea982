"""The run report: every result folder's tables and figures, in one HTML file and in Markdown.

The writer knows no stage: it asks each registered stage's report part
(:class:`~crosslens.stages.reporting.ReportPart`) for its summary tables (Table 1, Table 2), its
lines of each folder's metadata, its per-language columns and its sections, in registry order.

``report.html`` is self-contained (figures are base64 ``data:`` URIs, styles are inline, there is
no script and no external resource), so it can be mailed, archived or opened offline years later.
``report.md`` holds the same tables and links the PNGs written next to each folder's data.

A *result folder* is any folder holding a stage summary; a report root is one such folder or a run
root with ``<model>/<dataset>/`` result folders below it. Everything is read from those files alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import yaml

from crosslens import __version__
from crosslens.files import Schema, read_json
from crosslens.render.tables import Table
from crosslens.scoring import RECORDS
from crosslens.stages.reporting import (
    Figure,
    ReportPart,
    ResultFolder,
    find_results,
    report_parts,
    summary_files,
)
from crosslens.store import atomic_write_text

__all__ = ["write_report", "folder_sections", "summary_tables", "meta_table", "EXPERIMENT_FILE", "Experiment"]

EXPERIMENT_FILE = "experiment.json"


class Experiment(Schema):
    """``experiment.json``: the command and configuration of the run whose results the report shows."""

    command: str = ""
    config: dict[str, Any] = {}


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
  padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em}
table{border-collapse:collapse;margin:0 0 1.2em;font-size:.85em}
p.caption{font-weight:600;font-size:.85em;margin:1.2em 0 .3em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child,table.kv td,table.kv th{text-align:left} th.group{text-align:center}
p.note{font-size:.8em;color:#555;margin-top:-.8em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
nav li{margin:.1em 0}
"""


def meta_table(r: ResultFolder, parts: list[tuple[str, ReportPart]]) -> Table:
    """Run metadata: what every stage records (model, data, prompt), then each stage's own lines."""
    stages = r.run.get("stages", {})
    first = next(iter(stages.values()), {})
    model = first.get("model") or {}
    fp = first.get("fingerprint", {})
    rows: list[tuple[str, Any]] = [
        ("model", model.get("spec", r.model)),
        ("revision", model.get("revision", fp.get("revision"))),
        (
            "architecture",
            f"{model.get('model_type', '–')}, {model.get('n_layers', '?')} layers, "
            f"d_model {model.get('d_model', '?')}, vocab {model.get('vocab_size', '?')}"
            if model
            else None,
        ),
        ("final logit softcap", model.get("final_logit_softcap")),
        (
            "dtype / device",
            f"{model.get('dtype', fp.get('dtype', '–'))} / {model.get('device', '–')}"
            if model or fp
            else None,
        ),
        ("GGUF source", model.get("gguf")),
        ("dataset", f"{r.dataset} ({', '.join(first.get('languages') or [])})"),
        (
            "prompt template",
            f"{fp['template']} (hash {fp.get('template_hash', '–')})" if "template" in fp else None,
        ),
        (
            "few-shot exemplars",
            f"{fp['fewshot']['k']} from {fp['fewshot']['source']}: {', '.join(fp['fewshot']['items'])}"
            if fp.get("fewshot")
            else None,
        ),
        ("chat template", f"applied (sha256 {fp['chat_template']})" if fp.get("chat_template") else None),
        ("system instruction", fp.get("system_instruction")),
        ("data source", fp.get("data_source")),
    ]
    for _, part in parts:
        rows += part.meta_rows(r)
    rows.append(
        (
            "seed / crosslens",
            f"{first.get('seed', '–')} / {first.get('crosslens_version', '–')}" if first else None,
        )
    )
    cells = [[k, str(v)] for k, v in rows if v is not None]
    return Table("Run metadata (run.json)", ["field", "value"], cells, css="kv")


def summary_tables(results: list[ResultFolder]) -> list[Table]:
    """The tables across folders (Table 1, Table 2, ...), in stage order."""
    return [t for _, part in report_parts() for t in part.summary_tables(results)]


def folder_sections(r: ResultFolder) -> list[Table | Figure]:
    """A folder's run metadata, then every stage's tables and figures (drawn here), in stage order."""
    parts = report_parts()
    columns = [c for _, part in parts for c in part.columns(r)]
    return [meta_table(r, parts), *(s for _, part in parts for s in part.sections(r, columns))]


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _experiment(root: Path) -> Experiment | None:
    p = root / EXPERIMENT_FILE
    return read_json(p, Experiment) if p.is_file() else None


def _no_results(root: Path) -> ValueError:
    """Nothing to report: say so, or that a folder's evaluation summary can be rebuilt."""
    records = sorted(p.parent.parent for p in root.glob(f"**/{RECORDS}/*.parquet"))
    if records:
        return ValueError(
            f"{records[0]} holds {RECORDS}/ but no summary.json; rebuild it with `crosslens metrics "
            f"{records[0]}`, then report"
        )
    return ValueError(
        f"{root}: no crosslens results here (none of {', '.join(summary_files())} in it or below)"
    )


def write_report(root: str | Path) -> Path:
    """Draw every figure and write ``report.html`` (self-contained) and ``report.md`` into ``root``."""
    root = Path(root)
    results = find_results(root)
    if not results:
        raise _no_results(root)
    experiment = _experiment(root)
    e = html.escape
    h = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>crosslens report — {e(root.name)}"
        f"</title><style>{STYLE}</style></head><body>",
        f"<h1>crosslens report: {e(root.name)}</h1>",
        f"<p>{len(results)} result folder(s); crosslens {e(__version__)}.</p>",
    ]
    md = [
        f"# crosslens report: {root.name}",
        "",
        f"{len(results)} result folder(s); crosslens {__version__}.",
        "",
    ]
    if experiment:
        cmd = experiment.command
        config = yaml.safe_dump(
            experiment.config, sort_keys=False, allow_unicode=True, default_flow_style=None
        )
        h.append(
            f"<h2>Experiment</h2><p>Command:</p><pre>{e(cmd)}</pre><p>Configuration:</p><pre>{e(config)}</pre>"
        )
        md += ["## Experiment", "", "```", cmd, "```", "", "```yaml", config.rstrip(), "```", ""]
    h.append(
        "<nav><ul>"
        + "".join(f"<li><a href='#{r.anchor}'>{e(r.model)} — {e(r.dataset)}</a></li>" for r in results)
        + "</ul></nav>"
    )
    main = summary_tables(results)
    h.append("<h2>Summary tables</h2>" + "".join(t.html() for t in main))
    md += ["## Summary tables", "", *(t.markdown() for t in main)]
    for r in results:
        h.append(
            f"<h2 id='{r.anchor}'>{e(r.model)} — {e(r.dataset)}</h2><p>Folder: <code>{e(r.rel)}</code></p>"
        )
        md += [f"## {r.model} — {r.dataset}", "", f"Folder: `{r.rel}`", ""]
        cmds = r.commands()
        if cmds:
            h.append("<h3>Command lines</h3><pre>" + e("\n".join(cmds)) + "</pre>")
            md += ["Command lines:", "", "```", *cmds, "```", ""]
        for section in folder_sections(r):
            if isinstance(section, Table):
                h.append(section.html())
                md.append(section.markdown())
            else:
                h.append(
                    f"<figure><img src='{_img(section.path)}' alt='{e(section.caption)}'>"
                    f"<figcaption>{e(section.caption)}</figcaption></figure>"
                )
                md += [f"![{section.caption}]({section.path.relative_to(root).as_posix()})", "",
                       f"_{section.caption}_", ""]  # fmt: skip
    h.append("</body></html>")
    atomic_write_text(root / "report.md", "\n".join(md) + "\n")
    path = root / "report.html"
    atomic_write_text(path, "\n".join(h) + "\n")
    return path
