"""``mmtune report RUN_DIR``: a self-contained HTML report and a markdown summary of a run
directory (``mmtune run``) or a comparison directory (``mmtune compare``).

``collect`` reads the directory into plain dicts (tolerating missing pieces, each noted),
``plots`` draws the figures with matplotlib (imported lazily, Agg canvas, no pyplot) and
``render`` lays out tables and figures as HTML (figures embedded as base64 PNG) and as
GitHub markdown (figures as PNG files in ``report_files/``). See docs/report.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ReportPaths", "write_report"]

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
FILES_DIR = "report_files"


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 progress: Callable[[str], None] = print, *, dpi: int | None = None) -> ReportPaths:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` for ``run_dir``.

    ``run_dir`` is a pipeline run directory or a comparison directory (``compare.json``);
    ``out_dir`` defaults to ``run_dir``. Missing pieces become notes in the report; only a
    directory that holds neither kind raises ``FileNotFoundError``.
    """
    from mmtune.report import plots, render
    from mmtune.report.collect import collect

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    data = collect(run_dir)
    progress(f"[report] read {data['kind']} directory {run_dir}"
             + (f" ({len(data['notes'])} note(s))" if data["notes"] else ""))
    title, blocks = render.build(data, dpi or plots.DPI)
    out.mkdir(parents=True, exist_ok=True)
    files = out / FILES_DIR
    files.mkdir(exist_ok=True)
    for old in files.glob("fig*.png"):  # figures of an earlier report of this directory
        old.unlink()
    figures = []
    names = render.figure_files(blocks)
    figs = [b for b in blocks if isinstance(b, render.Figure)]
    for (n, name), fig in zip(sorted(names.items()), figs):
        path = files / name
        path.write_bytes(fig.png)
        figures.append(path)
        progress(f"[report] figure {n}: {path}")
    md = out / MARKDOWN_NAME
    _write(md, render.render_markdown(title, blocks, FILES_DIR))
    progress(f"[report] markdown: {md}")
    html_path = out / HTML_NAME
    _write(html_path, render.render_html(title, blocks))
    progress(f"[report] html: {html_path}")
    return ReportPaths(html=html_path, markdown=md, figures=figures)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
