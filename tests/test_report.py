"""The report a first-time user reads: verdict first, a short table, the full table collapsed, honest metric
plots (no NFE, one panel per metric with its direction, error bars from spreads), grid labels that never
split a word, a caption for the sample grid. Fast: no training, tiny videos."""

import json
import re

import numpy as np
import pytest
import torch

from vpae.eval import make_grid, write_report
from vpae.eval import report as rep
from vpae.eval.report import default_key_columns, default_plot_columns, html_table, markdown_table, wrap_label


def _demo_like_rows(n_proxy=15):
    """A demo-shaped table: ~30 columns, NFE, spreads, a speedup and a ground-truth row without NFE."""
    rows = {}
    for i, (name, nfe) in enumerate([("teacher 50 NFE (50 stochastic steps)", 50), ("teacher 1 NFE", 1),
                                     ("V-PAE 1 NFE", 1)]):
        r = {"NFE": nfe, "oracle/caption_following": 0.9 - 0.1 * i, "oracle/persistence": 0.95,
             "oracle/first_frame_psnr": 40.0 + i, "oracle/mode_coverage": 0.8, "oracle/mode_coverage_se": 0.04,
             "oracle/mode_conditions": 25, "oracle/mode_coverage_data": 0.8125, "oracle/sharpness": 1.1}
        r.update({f"proxy/dim_{k}": 0.5 + 0.01 * k for k in range(n_proxy)})
        r.update({"FD-EffNetLite0-frames": 10.0 + i, "latency_s": 1.0 / (1 + 40 * i), "speedup_vs_100NFE": 1 + 40 * i})
        rows[name] = r
    rows["ground truth"] = {"oracle/caption_following": 1.0, "oracle/persistence": 1.0, "oracle/first_frame_psnr": 100.0,
                            "oracle/mode_coverage": 0.81, "oracle/mode_coverage_se": 0.03}
    return rows


@pytest.fixture
def panels(monkeypatch):
    """The axes of every metric figure written (titles, x labels, bar containers)."""
    seen = []
    real = rep._save_panels

    def spy(fig, axes, n, path):
        seen.append([(ax.get_title(), ax.get_xlabel(), list(ax.containers)) for ax in list(axes.flat)[:n]])
        return real(fig, axes, n, path)
    monkeypatch.setattr(rep, "_save_panels", spy)
    return seen


def _has_errorbars(containers):
    return any(type(c).__name__ == "ErrorbarContainer" for c in containers)


VERDICT = ["Demo contract PASS: the 1-step generator reaches at least 0.90x of the multi-step teacher on all 4 metrics.",
           "caption following: 0.700 vs 0.900 = 0.78x FAIL (the teacher's own 1-step sample: 0.800)"]


def test_verdict_comes_first_then_short_table_then_full_table_collapsed(tmp_path):
    rows = _demo_like_rows()
    paths = write_report(tmp_path, rows, None, None, title="t", notes=["a note"], verdict=VERDICT,
                         key_columns=["NFE", "oracle/caption_following", "oracle/mode_coverage", "latency_s"],
                         plot_columns=["oracle/mode_coverage"])
    page = paths["html"].read_text()
    body = page.split("<body>", 1)[1]
    assert body.index("Demo contract") < body.index("<table") < body.index("<details")
    assert body.index("</h1>") < body.index("Demo contract")               # right under the title
    assert '<span class="FAIL">FAIL</span>' in page and 'class="verdict pass"' in page
    short, full = body.split("<details", 1)
    assert short.count("<table") == 1 and "oracle/mode_conditions" not in short
    assert short.count("<th>") == 5                                        # method + 4 key columns, not ~30
    assert "mode coverage \u2191" in short and "latency (s) \u2193" in short   # readable name + direction
    assert "0.800 \u00b1 0.040" in short                                   # the spread next to its value
    assert "oracle/mode_conditions" in full and full.index("<table") < full.index("</details>")
    assert body.index("</details>") < body.index("<h2>Metrics") < body.index("<h2>Notes")
    md = paths["markdown"].read_text()
    assert md.index("Demo contract") < md.index("| method |") < md.index("<details>")
    assert md.index("<details>") < md.index("| method | NFE | oracle/caption_following")


def test_without_verdict_a_small_table_stays_one_table(tmp_path):
    rows = {"a": {"FD": 1.0, "NFE": 4}, "b": {"FD": 2.0, "NFE": 1}}
    paths = write_report(tmp_path, rows)
    page = paths["html"].read_text()
    assert 'id="verdict"' not in page and "<details" not in page and page.count("<table") == 1
    assert "| b | 2.0000 | 1 |" in paths["markdown"].read_text()


def test_metric_plot_never_shows_nfe_and_states_direction_units_and_error_bars(tmp_path, panels):
    rows = _demo_like_rows()
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    chosen = default_plot_columns(rows, cols)
    assert "NFE" not in chosen and "speedup_vs_100NFE" not in chosen
    assert not any(c.endswith(("_se", "_std")) for c in chosen)
    assert "oracle/mode_conditions" not in chosen and "oracle/mode_coverage_data" not in chosen
    assert chosen[:4] == ["oracle/caption_following", "oracle/persistence", "oracle/first_frame_psnr",
                          "oracle/mode_coverage"] and chosen[-1] == "latency_s" and len(chosen) <= 12
    assert "NFE" in default_key_columns(rows, cols) and "latency_s" in default_key_columns(rows, cols)
    # even when asked to, NFE (a setting) gets no panel
    paths = write_report(tmp_path, rows, plot_columns=["NFE", "oracle/mode_coverage", "oracle/first_frame_psnr",
                                                       "latency_s", "oracle/sharpness"])
    assert paths["metrics_plot"].is_file()
    (fig,) = panels
    titles = [t for t, _, _ in fig]
    assert len(fig) == 4 and not any("NFE" in t for t in titles)
    assert titles[0] == "mode coverage\nhigher is better \u2191"
    assert titles[2] == "latency\nlower is better \u2193" and titles[3].endswith("closer to 1 is better")
    xlabels = dict(zip(titles, (x for _, x, _ in fig)))
    assert "dB" in xlabels["first-frame PSNR\nhigher is better \u2191"]
    assert "log scale" in xlabels["latency\nlower is better \u2193"]             # 41x apart
    mc = fig[0]
    assert "\u00b1 standard error" in mc[1] and _has_errorbars(mc[2])           # error bars from *_se
    assert not _has_errorbars(fig[1][2])                                         # none invented


def test_default_report_plots_no_nfe_either(tmp_path, panels):
    write_report(tmp_path, _demo_like_rows(n_proxy=2))
    titles = [t for t, _, _ in panels[0]]
    assert titles and not any("NFE" in t or "speedup" in t for t in titles)
    assert all("\n" in t for t in titles)                     # every panel: name + direction line


@pytest.mark.parametrize("text", ["teacher 50 NFE (50 stochastic steps)",
                                  "teacher 50 NFE, video 3 (small object), 4 noises",
                                  "V-PAE 1 NFE, video 12 (large object), 4 noises", "ground truth"])
@pytest.mark.parametrize("width", [106, 152])
def test_grid_labels_wrap_on_spaces_never_mid_word(text, width):
    import cv2
    lines, scale = wrap_label(text, width, 120)
    assert " ".join(lines) == text                            # every word whole, in order, nothing lost
    assert all(cv2.getTextSize(ln, 0, scale, 1)[0][0] <= width for ln in lines)
    assert scale >= 0.3                                       # still readable


def test_grid_label_shrinks_the_font_before_it_cuts():
    big = wrap_label("short", 150, 120)[1]
    long = wrap_label("a much longer label that needs several lines to fit in", 150, 60)
    assert long[1] < big and " ".join(long[0]) == "a much longer label that needs several lines to fit in"
    lines, _ = wrap_label("Supercalifragilisticexpialidocious-and-more-and-more", 40, 40)
    assert len(lines) == 1 and lines[0].endswith("..")        # a too-long word is cut, never split over lines


def test_grid_shape_and_caption(tmp_path):
    grids = {"teacher 50 NFE (50 stochastic steps)": [torch.rand(3, 3, 16, 16) * 2 - 1] * 4,
             "V-PAE 1 NFE": [np.zeros((2, 16, 16, 3), np.uint8)] * 2}
    g = make_grid(grids, cell=64)
    assert g.shape[:2] == (3, 128) and g.shape[2] == 110 + 4 * 64 + 3 * 4          # label, samples, gaps
    paths = write_report(tmp_path, {"a": {"x": 1.0}}, grids, grid_caption="Rows: methods.\nColumns: conditions 1-4.")
    page = paths["html"].read_text()
    assert re.search(r'<img src="samples_grid.gif"[^>]*><figcaption>Rows: methods\.<br>Columns: conditions 1-4\.',
                     page)
    assert "Columns: conditions 1-4." in paths["markdown"].read_text()


def test_tables_keep_their_signatures():
    rows = {"m": {"a": 1.5, "b": None}}
    assert markdown_table(rows) == "| method | a | b |\n|---|---|---|\n| m | 1.5000 | n/a |"
    assert html_table(rows, ["b"]) == "<table><thead><tr><th>method</th><th>b</th></tr></thead><tbody><tr><td>m</td>" \
                                      "<td>n/a</td></tr></tbody></table>"


def test_demo_report_rebuilds_from_saved_files(tmp_path):
    from vpae.toy.demo import GRIDS_FILE, contract_verdict, demo_contract, write_demo_report
    rows = _demo_like_rows()
    t100 = "teacher 50 NFE (50 stochastic steps)"
    contract = demo_contract(rows, t100)
    lines = contract_verdict(contract, rows, t100)
    assert lines[0].startswith("Demo contract FAIL") and "caption following" in lines[0] and "81x faster" in lines[0]
    assert lines[1] == "caption following: 0.700 vs 0.900 = 0.78x FAIL (the teacher's own 1-step sample: 0.800)"
    assert any(ln.startswith("persistence: 0.950 vs 0.950 = 1.00x PASS") for ln in lines)
    assert any(ln.startswith("first-frame PSNR (dB): 42.000 vs 40.000 = 1.05x PASS") for ln in lines)
    assert any("0.800 \u00b1 0.040 vs 0.800 \u00b1 0.040 = 1.00x \u00b1 0.07 PASS" in ln for ln in lines)
    results = {"rows": rows, "contract": contract, "teacher_row": t100, "notes": ["n1"],
               "grid": {"first_rows_videos": 2, "captions": ["a red circle moves left", "a blue square moves up"],
                        "noise_rows": []}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    torch.save({"ground truth": torch.zeros(2, 3, 3, 16, 16), t100: torch.zeros(2, 3, 3, 16, 16)}, tmp_path / GRIDS_FILE)
    paths = write_demo_report(tmp_path)
    page = paths["html"].read_text()
    assert page.index("Demo contract <span class=\"FAIL\">FAIL") < page.index("<table") and "grid" in paths
    assert "\u201ca red circle moves left\u201d" in page and "Rows 1-2 (ground truth, teacher 50 NFE" in page


def test_vbench_columns_of_vpae_eval_are_known_metrics():
    from vpae.eval.run import SHORT
    assert set(SHORT.values()) == set(rep.VBENCH_SHORT)
    assert rep.metric_info("Subj Cons*")[2] == "higher" and rep.metric_info("FD-EffNetLite0-frames")[2] == "lower"
    assert rep.metric_info("NFE") is None and rep.metric_info("speedup") is None
