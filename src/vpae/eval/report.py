"""Markdown + HTML reports with a GIF sample grid and PNG plots. Generic: the demo reuses write_report."""

from __future__ import annotations

import html
import json
import math
import re
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


# ------------------------------------------------------------------------------------------ metric names
# What a column is, for the short table and the plots: (readable name, unit or scale, better direction).
# direction: "higher", "lower" or "closer to 1". A column without an entry here is not plotted (its
# direction is unknown); NFE, seeds, speedups, counts and spreads (*_se, *_std) are settings or
# side numbers, never metrics.
METRICS: dict[str, tuple[str, str, str]] = {
    "oracle/caption_following": ("caption following", "fraction of videos", "higher"),
    "oracle/persistence": ("persistence", "1 = object unchanged", "higher"),
    "oracle/first_frame_psnr": ("first-frame PSNR", "dB", "higher"),
    "oracle/mode_coverage": ("mode coverage", "0-1, per condition", "higher"),
    "oracle/direction_accuracy": ("direction accuracy", "fraction of videos", "higher"),
    "oracle/caption_score": ("caption score", "0-1", "higher"),
    "oracle/displacement_error_px": ("displacement error", "px", "lower"),
    "oracle/sharpness": ("sharpness", "ratio to the real video", "closer to 1"),
    "oracle/sharpness_error": ("sharpness error", "|sharpness - 1|", "lower"),
    "oracle/mode_coverage_pooled": ("mode coverage, pooled", "0-1", "higher"),
    "oracle/mode_diversity": ("mode diversity", "fraction of conditions", "higher"),
    "oracle/mode_assigned": ("samples in a mode", "fraction", "higher"),
    "latency_s": ("latency", "seconds per video", "lower"),
    "diffusion_s": ("diffusion time", "seconds per video", "lower"),
    "total_s": ("total time", "seconds per video", "lower"),
}
VBENCH_SHORT = ("I2V Subj", "I2V Bkg", "Subj Cons", "Bkg Cons", "Motion Smooth", "Dyn Degree", "Aesthetic", "Imaging")
"""vpae eval's column names of the VBench-I2V dimensions (vpae.eval.run.SHORT, which imports this module)."""
NOT_METRICS = ("NFE", "seeds", "oracle/mode_conditions", "oracle/mode_coverage_data")
SPREADS = (("_std", "std over seeds"), ("_se", "standard error"))
_ARROW = {"higher": "\u2191", "lower": "\u2193", "closer to 1": "\u2192 1"}


def metric_info(col: str) -> tuple[str, str, str] | None:
    """(readable name, unit, direction) of a table column that is a metric of known direction, else None."""
    if col in METRICS:
        return METRICS[col]
    if is_setting(col):
        return None
    if re.match(r"(FD|FVD)\b", col):
        return (col, "Frechet distance to the real videos", "lower")
    if col.startswith("proxy/"):
        return (col[len("proxy/"):].replace("_", " ") + " (proxy)", "VBench-I2V proxy, 0-1", "higher")
    if "score[" in col and not col.startswith("missing"):
        return (col.replace("_", " "), "VBench-I2V aggregate", "higher")
    if col.rstrip("*") in VBENCH_SHORT:
        return (col, "VBench-I2V dimension" + (", offline tier" if col.endswith("*") else ""), "higher")
    return None


def _spread(row: Mapping[str, Any], col: str) -> tuple[float, str] | None:
    for suffix, name in SPREADS:
        v = row.get(col + suffix)
        if _num(v):
            return float(v), name
    return None


def _num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


_UNITS = {"dB": "dB", "px": "px", "seconds per video": "s"}
_HEADERS = {"speedup_vs_100NFE": "speedup vs first row"}


def _header(col: str) -> str:
    """A short-table header: the metric's name, its unit when short, the better direction as an arrow."""
    info = metric_info(col)
    if not info:
        return _HEADERS.get(col, col)
    unit = f" ({_UNITS[info[1]]})" if info[1] in _UNITS else ""
    return f"{info[0]}{unit} {_ARROW[info[2]]}"


def _key_rows(rows: Mapping[str, Mapping[str, Any]], cols: Sequence[str]) -> dict[str, dict[str, str]]:
    """The short table's cells: values with their spread where the row carries one ("0.771 +- 0.037")."""
    out = {}
    for m, r in rows.items():
        cells = {}
        for c in cols:
            sp = _spread(r, c) if _num(r.get(c)) else None
            cells[_header(c)] = _short(r.get(c)) + (f" \u00b1 {_short(sp[0])}" if sp else "")
        out[m] = cells
    return out


def is_setting(col: str) -> bool:
    """A column that is a setting or a side number, not a metric to compare: NFE, seeds, speedups (the latency
    panel shows the same), counts, reference constants and spreads (*_se, *_std: the error bars)."""
    return col in NOT_METRICS or col.startswith("speedup") or any(col.endswith(s) for s, _ in SPREADS)


def default_plot_columns(rows: Mapping[str, Mapping[str, Any]], cols: Sequence[str], limit: int = 12) -> list[str]:
    """The metrics worth a panel (a finite value in two or more rows, never a setting such as NFE): the toy
    oracle's first (what the demo contract uses), VBench total scores, Frechet distances, the other metrics of
    known direction, then numeric columns of unknown direction (their panel says so), latency last; at most
    `limit`."""
    num = [c for c in cols if not is_setting(c) and sum(_num(r.get(c)) for r in rows.values()) >= 2]
    timing = [c for c in ("latency_s", "diffusion_s", "total_s") if c in num]
    first = [c for c in METRICS if c in num and c not in timing]
    totals = sorted((c for c in num if "total_score[" in c), key=lambda c: "renormalized" not in c)  # VBench totals
    fd = [c for c in num if re.match(r"(FD|FVD)\b", c)]
    known = [c for c in num if c not in first + totals + fd + timing and metric_info(c)]
    unknown = [c for c in num if not metric_info(c) and c not in timing]
    return (first + totals + fd + known + unknown)[:max(0, limit - len(timing))] + timing


def default_key_columns(rows: Mapping[str, Mapping[str, Any]], cols: Sequence[str], limit: int = 6) -> list[str]:
    """The short table: NFE, the first `limit` plotted metrics, latency (what a first-time reader compares)."""
    metrics = [c for c in default_plot_columns(rows, cols) if c != "latency_s" and metric_info(c)][:limit]
    return [c for c in ("NFE",) if c in cols] + metrics + [c for c in ("latency_s",) if c in cols]


# ------------------------------------------------------------------------------------------ sample grid
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


LABEL_SCALES = (0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.27, 0.24)
"""Font scales a grid label tries, largest first (cv2 Hershey simplex: about 22 px per unit of scale)."""


def wrap_label(text: str, width: int, height: int, scales: Sequence[float] = LABEL_SCALES) -> tuple[list[str], float]:
    """Lines of `text` that fit a width x height box, broken only at spaces, at the largest font scale that
    fits; a word too wide even at the smallest scale is cut at the end ("..") and never split over lines."""
    import cv2
    words = text.split()
    for i, scale in enumerate(scales):
        line_h = _line_height(scale)
        lines: list[str] = []
        for w in words:
            cand = f"{lines[-1]} {w}" if lines else w
            if lines and cv2.getTextSize(cand, _FONT, scale, 1)[0][0] <= width:
                lines[-1] = cand
            else:
                lines.append(w)
        fits = all(cv2.getTextSize(ln, _FONT, scale, 1)[0][0] <= width for ln in lines)
        if fits and len(lines) * line_h <= height or i == len(scales) - 1:
            break
    out = []
    for ln in lines[:max(1, height // line_h)]:
        while cv2.getTextSize(ln, _FONT, scale, 1)[0][0] > width and len(ln) > 3:
            ln = ln[:-3] + ".."
        out.append(ln)
    return out, scale


def _line_height(scale: float) -> int:
    return int(round(34 * scale)) + 2


def _label(text: str, h: int, w: int) -> np.ndarray:
    import cv2
    img = np.full((h, w, 3), 255, np.uint8)
    lines, scale = wrap_label(text, w - 8, h - 6)
    lh = _line_height(scale)
    top = max(0, (h - lh * len(lines)) // 2)
    for i, ln in enumerate(lines):
        cv2.putText(img, ln, (4, top + lh * (i + 1) - 4), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def make_grid(grids: Mapping[str, Sequence[Any]], max_per_method: int = 4, cell: int = 128) -> np.ndarray:
    """(F, H, W, 3) uint8 grid: one row per method (label column first: the name wrapped at spaces, the font
    shrunk to fit), samples side by side with white gaps; every sample is resized to cell x cell*aspect of the
    first sample (small videos with nearest-neighbour, so pixels stay sharp); shorter videos hold their last
    frame. Height: rows x cell."""
    import cv2
    rows = {m: [to_uint8(v) for v in vs[:max_per_method]] for m, vs in grids.items() if len(vs)}
    if not rows:
        raise ValueError("no videos for the sample grid")
    first = next(iter(rows.values()))[0]
    ch = cell
    cw = max(8, int(round(cell * first.shape[2] / first.shape[1])))
    nf = max(len(v) for vs in rows.values() for v in vs)
    ncol = max(len(vs) for vs in rows.values())
    lw = max(110, int(round(1.25 * cell)))
    gap = 4 if ncol > 1 else 0  # white columns between samples, so neighbouring videos read as separate
    out = np.full((nf, ch * len(rows), lw + cw * ncol + gap * (ncol - 1), 3), 255, np.uint8)
    for r, (m, vs) in enumerate(rows.items()):
        out[:, r * ch:(r + 1) * ch, :lw] = _label(m, ch, lw)
        for c, v in enumerate(vs):
            x0 = lw + c * (cw + gap)
            for t in range(nf):
                fr = v[min(t, len(v) - 1)]
                cell = cv2.resize(fr, (cw, ch), interpolation=cv2.INTER_NEAREST if fr.shape[0] * 4 <= ch
                                  else cv2.INTER_AREA)
                out[t, r * ch:(r + 1) * ch, x0:x0 + cw] = cell
        if r:  # a white line between rows (the height stays rows x cell)
            out[:, r * ch:r * ch + 2, lw:] = 255
    return out


# ------------------------------------------------------------------------------------------ plots
def _short(v: Any) -> str:
    """A value for a reader: 3 decimals under 10, 1 under 1000, none above (the full table keeps _fmt)."""
    if not _num(v) or isinstance(v, (int, np.integer)):
        return _fmt(v)
    v = float(v)
    return f"{v:.3f}" if abs(v) < 10 else (f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}")


def reference_rows(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Rows that are references, not samplers: no NFE where other rows have one (the demo's ground truth)."""
    if not any(_num(r.get("NFE")) for r in rows.values()):
        return []
    return [m for m, r in rows.items() if not _num(r.get("NFE"))]


def _plot_metrics(rows, cols, path: Path, plot_columns: Sequence[str] | None = None) -> Path | None:
    """One horizontal-bar panel per metric (name and better direction in the title, unit below), a row's
    spread (*_se / *_std column) as an error bar, its value at the bar's end. Never a setting such as NFE.
    Reference rows (reference_rows: e.g. the ground truth) are grey and do not set the axis range: a value
    beyond it (first-frame PSNR of the ground truth: 100 dB) is marked off scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    num = [c for c in (plot_columns if plot_columns is not None else default_plot_columns(rows, cols))
           if not is_setting(c) and any(_num(r.get(c)) for r in rows.values())]
    if not num:
        return None
    methods = list(rows)
    refs = set(reference_rows(rows))
    n = len(num)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    label_w = min(3.2, 0.3 + 0.075 * max(len(m) for m in methods))
    ph = 1.0 + 0.3 * len(methods)
    fig, axes = plt.subplots(nrows, ncols, figsize=(label_w + 3.1 * ncols, ph * nrows), squeeze=False)
    colors = [(0.75, 0.75, 0.75, 1.0) if m in refs else plt.cm.tab10(i % 10) for i, m in enumerate(methods)]
    y = np.arange(len(methods))
    is_ref = np.array([m in refs for m in methods])
    for k, (ax, c) in enumerate(zip(axes.flat, num)):
        name, unit, direction = metric_info(c) or (c, "", "")
        vals = np.array([float(rows[m][c]) if _num(rows[m].get(c)) else np.nan for m in methods])
        spreads = [_spread(rows[m], c) for m in methods]
        err = np.array([s[0] if s else 0.0 for s in spreads])
        has_err = any(spreads)
        ax.barh(y, np.nan_to_num(vals), color=colors, xerr=err if has_err else None,
                error_kw={"elinewidth": 1, "capsize": 3, "ecolor": "black"})
        scale_vals = vals[np.isfinite(vals) & ~is_ref]
        if not scale_vals.size:
            scale_vals = vals[np.isfinite(vals)]
        scale_err = err[np.isfinite(vals) & ~is_ref] if scale_vals.size and (~is_ref).any() else np.zeros_like(scale_vals)
        log = bool(direction == "lower" and c.endswith("_s") and scale_vals.size and scale_vals.min() > 0
                   and scale_vals.max() / scale_vals.min() > 20)
        if log:
            ax.set_xscale("log")
            lo, hi = scale_vals.min() / 2, scale_vals.max() * 4
        else:
            top = float((scale_vals + scale_err).max()) if scale_vals.size else 1.0
            lo = min(0.0, float(scale_vals.min()) * 1.3) if scale_vals.size else 0.0
            hi = max(top * 1.35, 1e-9) if top > 0 else 1.0
        if direction == "closer to 1":
            ax.axvline(1.0, color="grey", ls="--", lw=1)
            hi = max(hi, 1.2)
        ax.set_xlim(lo, hi)
        for yi, v in zip(y, vals):
            if not np.isfinite(v):
                ax.text(lo, yi, " n/a", va="center", fontsize=7, color="grey")
            elif v > hi:
                ax.text(hi, yi, f"{_short(v)} (off scale) ", va="center", ha="right", fontsize=7)
            else:  # past the error bar's end, not on it
                e = err[yi] if has_err and np.isfinite(err[yi]) else 0.0
                ax.text(min(v + e, hi) if not log else v, yi, f" {_short(v)}", va="center", fontsize=7)
        ax.set_yticks(y, methods if k % ncols == 0 else [""] * len(methods), fontsize=7)
        ax.invert_yaxis()
        arrow = {"higher": "higher is better \u2191", "lower": "lower is better \u2193",
                 "closer to 1": "closer to 1 is better"}.get(direction, "direction not stated")
        ax.set_title(f"{name}\n{arrow}", fontsize=8.5)
        xl = unit + (" (log scale)" if log else "")
        if has_err:
            xl += f"; bars \u00b1 {next(s for s in spreads if s)[1]}"
        ax.set_xlabel(xl, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
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
    """One panel per curve: [(step, value)], or {series: [(step, value)]} drawn as several lines with a legend
    (an accuracy panel also gets the chance line at 0.5)."""
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
        series = pts if isinstance(pts, Mapping) else {None: pts}
        for label, line in series.items():
            if line:
                s, v = zip(*line)
                ax.plot(s, v, marker="." if len(s) < 20 else None, label=label)
        if isinstance(pts, Mapping):
            if "accuracy" in name or "probe" in name:
                ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    return _save_panels(fig, axes, n, path)


# ------------------------------------------------------------------------------------------ the report
_STYLE = """<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1250px;padding:0 1em;
 color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.full{overflow-x:auto}.full table{font-size:11px}
.verdict{border-left:6px solid #888;background:#f7f7f7;padding:.6em 1em;margin:1em 0}
.verdict.pass{border-color:#2a8a3e;background:#eef8f0}.verdict.fail{border-color:#c0392b;background:#fbeeee}
.verdict p{margin:.2em 0;font-size:1.05em}.verdict ul{margin:.4em 0;padding-left:1.3em}
.PASS{color:#1d6b2f;font-weight:bold}.FAIL{color:#b02a1c;font-weight:bold}
.hint{color:#555;font-size:.9em;margin:.2em 0}
details summary{cursor:pointer;color:#1a4f8a;margin:.6em 0}
figure{margin:.5em 0}figcaption{color:#444;font-size:.9em;max-width:1000px;margin-top:.4em}
img{max-width:100%;height:auto}
</style>"""


def _verdict_lines(verdict: str | Sequence[str] | None) -> list[str]:
    if not verdict:
        return []
    return [verdict] if isinstance(verdict, str) else [str(v) for v in verdict]


def _verdict_html(lines: list[str]) -> str:
    def mark(t: str) -> str:
        return re.sub(r"\b(PASS|FAIL)\b", r'<span class="\1">\1</span>', html.escape(t))
    head = lines[0]
    kind = "fail" if re.search(r"\bFAIL\b", head) else ("pass" if re.search(r"\bPASS\b", head) else "")
    items = "".join(f"<li>{mark(x)}</li>" for x in lines[1:])
    return (f'<section class="verdict {kind}" id="verdict"><p><strong>{mark(head)}</strong></p>'
            + (f"<ul>{items}</ul>" if items else "") + "</section>")


def _legend(rows, key_cols) -> str:
    """One line under the short table: the arrows, and what the +- numbers are."""
    spreads = sorted({sp[1] for r in rows.values() for c in key_cols if _num(r.get(c)) and (sp := _spread(r, c))})
    text = "\u2191 higher is better, \u2193 lower is better, \u2192 1: closer to 1 is better."
    if "NFE" in key_cols:
        text += " NFE: network evaluations per video (the cost; not a quality metric)."
    if spreads:
        text += f" \u00b1: {' / '.join(spreads)}."
    return text


def write_report(out_dir, table_rows: Mapping[str, Mapping[str, Any]], grids: Mapping[str, Sequence[Any]] | None = None,
                 curves: Mapping[str, Sequence[tuple[float, float]]] | None = None, *, title: str = "V-PAE evaluation",
                 notes: Sequence[str] = (), columns: Sequence[str] | None = None, results: Mapping[str, Any] | None = None,
                 fps: float = 8.0, max_per_method: int = 4, cell: int = 128, verdict: str | Sequence[str] | None = None,
                 key_columns: Sequence[str] | None = None, plot_columns: Sequence[str] | None = None,
                 grid_caption: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html, samples_grid.gif, plots/metrics.png, plots/curves.png (and
    results.json if `results` is given) into out_dir; returns the written paths by kind.

    table_rows: {method: {column: value}} (rows in insertion order; columns = union unless `columns`).
    grids: {method: [videos]} (torch (3,F,H,W) in [-1,1] or uint8 (F,H,W,3)); curves: {name: [(step, value)]}.
    notes: Markdown bullet lines (e.g. which tier produced which number).
    verdict: the outcome first (a headline, then one line per clause; PASS / FAIL are highlighted), e.g. the
    demo contract. key_columns: the short table (default: NFE, the main metrics of known direction, latency);
    the full table follows collapsed when it has more. plot_columns: one metrics.png panel each (default:
    default_plot_columns - never NFE). grid_caption: what the sample grid's rows and columns show.
    Page order: verdict, short table, full table, metric plots, samples, training curves, notes.
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
    p = _plot_metrics(table_rows, cols, out / "plots" / "metrics.png", plot_columns) if table_rows else None
    if p:
        paths["metrics_plot"] = p
    p = _plot_curves(curves, out / "plots" / "curves.png") if curves else None
    if p:
        paths["curves_plot"] = p
    if results is not None:
        paths["results"] = out / "results.json"
        paths["results"].write_text(json.dumps(results, indent=2, default=_json_default))

    if key_columns is None:
        key_cols = cols if len(cols) <= 8 else default_key_columns(table_rows, cols)
    else:
        key_cols = [c for c in key_columns if c in cols]
    split = bool(key_cols) and list(key_cols) != list(cols)
    key_rows = _key_rows(table_rows, key_cols) if split else None
    vlines = _verdict_lines(verdict)
    n_rest = len(cols)
    grid_cap = grid_caption or (f"One row per method (its name on the left), up to {max_per_method} of its samples "
                                "side by side; the GIF loops over the frames.")
    metrics_cap = ("One panel per metric: its name and the better direction in the title, its unit below; error "
                   "bars where the rows carry a spread. Settings (NFE, seeds, speedups) are not plotted; the full "
                   "table has every column.")

    md = [f"# {title}", ""]
    if vlines:
        md += [f"**{vlines[0]}**", ""] + [f"- {x}" for x in vlines[1:]] + [""]
    if split:
        md += [markdown_table(key_rows), "", _legend(table_rows, key_cols), "",
               f"<details><summary>Full table ({n_rest} columns)</summary>", "", markdown_table(table_rows, cols), "",
               "</details>", ""]
    else:
        md += [markdown_table(table_rows, cols), ""]
    if "metrics_plot" in paths:
        md += ["## Metrics", "", f"![Metrics](plots/{paths['metrics_plot'].name})", "", metrics_cap, ""]
    if "grid" in paths:
        md += ["## Samples", "", "![samples](samples_grid.gif)", ""] + [f"{x}  " for x in grid_cap.splitlines()] + [""]
    if "curves_plot" in paths:
        md += ["## Training curves", "", f"![Curves](plots/{paths['curves_plot'].name})", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>"]
    if vlines:
        body.append(_verdict_html(vlines))
    if split:
        legend = html.escape(_legend(table_rows, key_cols))
        body += ["<h2>Results</h2>", html_table(key_rows), f'<p class="hint">{legend}</p>',
                 f'<details><summary>Full table ({n_rest} columns)</summary><div class="full">{html_table(table_rows, cols)}'
                 "</div></details>"]
    else:
        body += ["<h2>Results</h2>", f'<div class="full">{html_table(table_rows, cols)}</div>']
    if "metrics_plot" in paths:
        body.append(f'<h2>Metrics</h2><figure><img src="plots/{paths["metrics_plot"].name}" alt="metrics">'
                    f"<figcaption>{html.escape(metrics_cap)}</figcaption></figure>")
    if "grid" in paths:
        body.append('<h2>Samples</h2><figure><img src="samples_grid.gif" alt="samples">'
                    f"<figcaption>{'<br>'.join(html.escape(x) for x in grid_cap.splitlines())}</figcaption></figure>")
    if "curves_plot" in paths:
        body.append(f'<h2>Training curves</h2><img src="plots/{paths["curves_plot"].name}" alt="training curves">')
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    paths["html"] = out / "report.html"
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                             f"{_STYLE}</head><body>{''.join(body)}</body></html>")
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
