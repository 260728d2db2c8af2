"""Markdown + HTML reports with a GIF sample grid and PNG plots. Generic: the demo reuses write_report."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vpae.eval.video import to_uint8


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _columns(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns:
        return list(columns)
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    return cols


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = _columns(rows, columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m, r in rows.items():
        lines.append(f"| {m} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def html_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *cols])
    body = "".join("<tr><td>" + html.escape(m) + "</td>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>"
                   for c in cols) + "</tr>" for m, r in rows.items())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _label(text: str, h: int, w: int) -> np.ndarray:
    import cv2
    img = np.full((h, w, 3), 255, np.uint8)
    scale = 0.4
    for i, chunk in enumerate([text[j:j + 14] for j in range(0, len(text), 14)][:4]):
        cv2.putText(img, chunk, (3, 14 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def make_grid(grids: Mapping[str, Sequence[Any]], max_per_method: int = 4, cell: int = 128) -> np.ndarray:
    """(F, H, W, 3) uint8 grid: one row per method (label column first), samples side by side; every
    sample is resized to cell x cell*aspect of the first sample; shorter videos hold their last frame."""
    import cv2
    rows = {m: [to_uint8(v) for v in vs[:max_per_method]] for m, vs in grids.items() if len(vs)}
    if not rows:
        raise ValueError("no videos for the sample grid")
    first = next(iter(rows.values()))[0]
    ch = cell
    cw = max(8, int(round(cell * first.shape[2] / first.shape[1])))
    nf = max(len(v) for vs in rows.values() for v in vs)
    ncol = max(len(vs) for vs in rows.values())
    lw = 110
    out = np.full((nf, ch * len(rows), lw + cw * ncol, 3), 255, np.uint8)
    for r, (m, vs) in enumerate(rows.items()):
        out[:, r * ch:(r + 1) * ch, :lw] = _label(m, ch, lw)
        for c, v in enumerate(vs):
            for t in range(nf):
                fr = v[min(t, len(v) - 1)]
                cell = cv2.resize(fr, (cw, ch), interpolation=cv2.INTER_AREA)
                out[t, r * ch:(r + 1) * ch, lw + c * cw: lw + (c + 1) * cw] = cell
    return out


def _plot_metrics(rows, cols, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    num = [c for c in cols if any(isinstance(r.get(c), (int, float, np.floating)) and not isinstance(r.get(c), bool)
                                  and r.get(c) is not None and math.isfinite(float(r.get(c))) for r in rows.values())]
    if not num:
        return None
    num = num[:16]
    n = len(num)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    methods = list(rows)
    for ax, c in zip(axes.flat, num):
        vals = [float(rows[m][c]) if isinstance(rows[m].get(c), (int, float, np.floating)) else np.nan for m in methods]
        ax.bar(range(len(methods)), vals, color=plt.cm.tab10(np.arange(len(methods)) % 10))
        ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=7, ha="right")
        ax.set_title(c, fontsize=8)
    return _save_panels(fig, axes, n, path)


def _save_panels(fig, axes, n: int, path: Path) -> Path:
    """Hide the unused panels of a small-multiples figure and write it."""
    import matplotlib.pyplot as plt
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_curves(curves, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    # Small multiples: one panel per curve (losses and metrics live on different scales).
    n = len(curves)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, curves.items()):
        s, v = zip(*pts)
        ax.plot(s, v, marker="." if len(s) < 20 else None)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    return _save_panels(fig, axes, n, path)


def write_report(out_dir, table_rows: Mapping[str, Mapping[str, Any]], grids: Mapping[str, Sequence[Any]] | None = None,
                 curves: Mapping[str, Sequence[tuple[float, float]]] | None = None, *, title: str = "V-PAE evaluation",
                 notes: Sequence[str] = (), columns: Sequence[str] | None = None, results: Mapping[str, Any] | None = None,
                 fps: float = 8.0, max_per_method: int = 4, cell: int = 128) -> dict[str, Path]:
    """Write report.md, report.html, samples_grid.gif, plots/metrics.png, plots/curves.png (and
    results.json if `results` is given) into out_dir; returns the written paths by kind.

    table_rows: {method: {column: value}} (rows in insertion order; columns = union unless `columns`).
    grids: {method: [videos]} (torch (3,F,H,W) in [-1,1] or uint8 (F,H,W,3)); curves: {name: [(step, value)]}.
    notes: Markdown bullet lines (e.g. which tier produced which number).
    """
    import imageio.v2 as imageio
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    cols = _columns(table_rows, columns)
    paths: dict[str, Path] = {}
    if grids:
        grid = make_grid(grids, max_per_method, cell)
        paths["grid"] = out / "samples_grid.gif"
        imageio.mimsave(paths["grid"], list(grid), duration=1000.0 / fps, loop=0)
    p = _plot_metrics(table_rows, cols, out / "plots" / "metrics.png") if table_rows else None
    if p:
        paths["metrics_plot"] = p
    p = _plot_curves(curves, out / "plots" / "curves.png") if curves else None
    if p:
        paths["curves_plot"] = p
    if results is not None:
        paths["results"] = out / "results.json"
        paths["results"].write_text(json.dumps(results, indent=2, default=_json_default))

    md = [f"# {title}", "", markdown_table(table_rows, cols), ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if "grid" in paths:
        md += ["## Samples", "", "![samples](samples_grid.gif)", ""]
    for k, cap in (("metrics_plot", "Metrics"), ("curves_plot", "Curves")):
        if k in paths:
            md += [f"## {cap}", "", f"![{cap}](plots/{paths[k].name})", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", html_table(table_rows, cols)]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    if "grid" in paths:
        body.append('<h2>Samples</h2><img src="samples_grid.gif" alt="samples">')
    for k, cap in (("metrics_plot", "Metrics"), ("curves_plot", "Curves")):
        if k in paths:
            body.append(f'<h2>{cap}</h2><img src="plots/{paths[k].name}" alt="{cap}">')
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}</style>")
    paths["html"] = out / "report.html"
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                             f"{style}</head><body>{''.join(body)}</body></html>")
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
