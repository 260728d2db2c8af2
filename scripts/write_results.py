"""Generate docs/RESULTS.md from the results.json files that `make demo`, the reproduction and the Table 1 / 2
analogues wrote, followed by the curated readings in docs/results_notes.md.

    python scripts/write_results.py --demo outputs/demo/results.json --reproduce outputs/reproduce/results.json \
        --table1 outputs/table1/results.json --table2 outputs/table2/results.json

Every number in the generated sections comes from those files; a section whose file is missing here is kept
as the current docs/RESULTS.md has it. A paper
claim "reproduces" only when its mean gap over seeds exceeds the spread (vpae.toy.ablate.judge); the verdicts are
the runs' own. docs/results_notes.md states what the numbers say (by topic, not by date) and is appended verbatim.
"""
import argparse
import json
import math
from pathlib import Path

DEMO_COLS = ["NFE", "oracle/caption_following", "oracle/direction_accuracy", "oracle/first_frame_psnr",
             "oracle/persistence", "oracle/sharpness", "oracle/mode_coverage", "oracle/mode_coverage_pooled",
             "oracle/mode_diversity", "oracle/mode_assigned", "FD-EffNetLite0-frames", "latency_s", "speedup_vs_100NFE"]
REPRO_COLS = ["oracle/caption_following", "oracle/persistence", "oracle/first_frame_psnr", "oracle/sharpness",
              "oracle/mode_coverage", "oracle/mode_coverage_pooled", "oracle/mode_diversity", "train_s"]


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def coverage_name(rows) -> str:
    """What a results file's "mode_coverage" is: per condition, or the pooled histogram in files that have no
    mode_coverage_pooled column (vpae.toy.oracle.mode_report computes both)."""
    return "mode_coverage" if any("mode_coverage_pooled" in k for r in rows.values() for k in r) else "mode_coverage_pooled"


def column_label(col: str, coverage: str) -> str:
    """A results column as a table shows it: no "oracle/" prefix, and "mode_coverage" named by coverage_name."""
    name = col.replace("oracle/", "")
    return name[:-len("mode_coverage")] + coverage if name.endswith("mode_coverage") else name


# Config keys as the current schema names them; results files keep the keys of the run that wrote them.
RENAMED_KEYS = {"baseline.": "comparison."} | {f"data.{k}": f"data.toy.{k}" for k in (
    "bounce", "caption_bank", "image_patch", "pixel_grid", "caption_speed", "caption_sign", "speeds", "sizes",
    "small_radius", "large_radius", "slow_travel", "fast_travel")}


def current_key(override: str) -> str:
    """'baseline.steps=300' -> 'comparison.steps=300', 'data.bounce=true' -> 'data.toy.bounce=true'."""
    for old, new in RENAMED_KEYS.items():
        if override.startswith(old) and (old.endswith(".") or override[len(old):len(old) + 1] in ("=", "")):
            return new + override[len(old):]
    return override


def overrides(r) -> str:
    """A results file's --set overrides as a list of current config keys, or 'none'."""
    return str([current_key(o) for o in r["overrides"]]) if r.get("overrides") else "none"


def table(rows, cols, std=False):
    cols = [c for c in cols if any(c in r for r in rows.values())]
    coverage = coverage_name(rows)
    head = [column_label(c, coverage) for c in cols]
    out = ["| method | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = fmt(r.get(c))
            if std and isinstance(r.get(c + "_std"), float) and not math.isnan(r[c + "_std"]):
                v += f" ± {r[c + '_std']:.3f}"
            cells.append(v)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def demo_section(d):
    cfg = d["config"]
    out = ["## `make demo` (Table 1 analogue, one seed)", "",
           f"Machine: {d['machine']}. Wall time {d['timings']['total_s']:.0f} s (training "
           f"{d['timings']['train_s']:.0f} s: phase I {d['timings'].get('priming', 0):.0f} s, phase II "
           f"{d['timings'].get('equilibrium', 0):.0f} s; evaluation {d['timings']['eval_s']:.0f} s). "
           f"Held-out split: {cfg['data']['heldout_size']} videos of {cfg['data']['frames']} x {cfg['data']['height']} x "
           f"{cfg['data']['width']}; mode metrics from 4 samples per video.", "",
           table(d["rows"], DEMO_COLS), "",
           "Contract (V-PAE 1 NFE must reach >= 0.90 of the multi-step teacher, the first row):", ""]
    for m, c in d.get("contract", {}).items():
        se = ((f" +- {c['student_se']:.3f}", f" +- {c['teacher_se']:.3f}", f" +- {c['ratio_se']:.2f}")
              if "ratio_se" in c else ("", "", ""))
        out.append(f"- {m}: {c['student']:.3f}{se[0]} / {c['teacher_multistep']:.3f}{se[1]} = **{c['ratio']:.2f}**{se[2]} "
                   f"({'pass' if c['pass'] else 'FAIL'}); the 1-NFE teacher has {c['teacher_1nfe']:.3f}")
    if any("ratio_se" in c for c in d.get("contract", {}).values()):
        out.append("\n(+- : standard errors over the two-mode conditions; the ratio's by the delta method.)")
    return "\n".join(out)


def repro_section(r):
    out = ["## Reproduction (Tables 1-3 analogues, 1-NFE generator, mean ± std over seeds)", "",
           f"Seeds {r['seeds']}; wall time of the call that finished it {r['total_s']:.0f} s (a resumed run counts only "
           f"its last call); overrides {overrides(r)}.", "",
           table(r["rows"], REPRO_COLS, std=True), "", "### Paper claims", "",
           "| claim | metric | gap (better - worse) | spread (std + std) | verdict |", "|---|---|---|---|---|"]
    for v in r["verdicts"]:
        out.append(f"| {v['claim']} | {v['metric'].replace('oracle/', '')} | {v['gap']:+.3f} | {v['spread']:.3f} | "
                   f"{v['verdict']} |")
    return "\n".join(out)


TABLE_METRICS = ["oracle/caption_following", "oracle/persistence", "oracle/first_frame_psnr", "oracle/mode_coverage",
                 "oracle/sharpness"]
TABLE_COLS = ([f"1nfe/{m}" for m in TABLE_METRICS] + ["1nfe/latency_s"] + [f"4nfe/{m}" for m in TABLE_METRICS]
              + ["4nfe/latency_s", "train_s"])


def cost_table(r) -> str:
    """Per row: the NFEs it is judged at, the setting its tuning chose, generator and critic/discriminator updates,
    backbone evaluations over training, training wall time (V-PAE's phase I included) and sampling latency."""
    tuning = r.get("tuning", {})
    out = ["| method | judged at NFE | chosen setting | generator updates | critic / discriminator updates | "
           "teacher evals | generator evals | other evals | train_s | 1 NFE latency_s |", "|---" * 10 + "|"]
    for name, row in r["rows"].items():
        t = tuning.get(name)
        chosen = t["trials"][t["chosen"]] if t else "-"
        gen = sum(v for k, v in row.items() if k.startswith("cost/updates_") and not k.endswith("_std")
                  and k.split("cost/updates_")[1] in ("generator", "detail_expert"))
        critic = sum(v for k, v in row.items() if k.startswith("cost/updates_") and not k.endswith("_std")
                     and k.split("cost/updates_")[1] not in ("generator", "detail_expert"))
        def count(v):
            return f"{v:.0f}" if isinstance(v, (int, float)) and v else "-"
        cells = [row.get("judged_nfe", "-"), chosen, count(gen), count(critic), count(row.get("cost/teacher_evals")),
                 count(row.get("cost/generator_evals")), count(row.get("cost/other_evals")), fmt(row.get("train_s")),
                 fmt(row.get("1nfe/latency_s"))]
        out.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def methods_table_section(r):
    """`vpae ablate --table 1 | 2` (vpae.toy.ablate.run_table): the comparison with the other methods."""
    n = r["table"]
    what = ("V-PAE against DMD2, MD, LCM, PCM, DCM, ADD at 4 NFE and DMD2, MD, LCM, ADD, APT at 1 NFE; LADD and rCM "
            "shown" if n == 1 else "none / LCM / V-PAE-I as the first phase")
    out = [f"## Table {n} analogue ({what}; mean ± std over seeds)", "",
           f"Command: `vpae ablate --table {n}` (docs/COMPARISON_METHODS.md). Seeds {r['seeds']}; "
           f"wall time of the call that finished it {r['total_s']:.0f} s; "
           f"overrides {overrides(r)}.", "",
           table(r["rows"], TABLE_COLS, std=True).replace("1nfe/", "1 NFE ").replace("4nfe/", "4 NFE "), ""]
    if n == 1 or r.get("tuning"):
        out += ["### Cost and tuning (means over seeds; updates and evaluations over the whole training)", "",
                cost_table(r), ""]
        for name, t in r.get("tuning", {}).items():
            if "chosen_for" in t:
                out.append(f"- {name}: the setting chosen for {t['chosen_for']} ({t['trials'][t['chosen']]})")
            else:
                ranks = ", ".join(f"{tr} {rank:.2f}" for tr, rank in zip(t["trials"], t["mean_rank"]))
                out.append(f"- {name}: mean validation rank {ranks} -> **{t['trials'][t['chosen']]}**")
        out.append("")
    out += ["### Paper claims", "",
            "| claim | metric | gap (better - worse) | spread (std + std) | verdict |", "|---|---|---|---|---|"]
    coverage = coverage_name(r["rows"])
    for v in r["verdicts"]:
        verdict = f"**{v['verdict']}**" if v["verdict"] == "contradicted" else v["verdict"]
        out.append(f"| {v['claim']} | {column_label(v['metric'], coverage)} | {v['gap']:+.3f} | {v['spread']:.3f} "
                   f"| {verdict} |")
    return "\n".join(out)


def kept_sections(path: Path) -> dict[str, str]:
    """The sections of an existing RESULTS.md by their heading's first words, so a section whose results file is
    not on this machine is kept as it was instead of dropped."""
    if not path.is_file():
        return {}
    text = path.read_text()
    notes_at = text.find("\n## What the numbers say")
    parts = (text[:notes_at] if notes_at >= 0 else text).split("\n## ")[1:]
    return {" ".join(p.split()[:2]): "## " + p.rstrip() for p in parts}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=Path("outputs/demo/results.json"))
    ap.add_argument("--reproduce", type=Path, default=Path("outputs/reproduce/results.json"))
    ap.add_argument("--table1", type=Path, default=Path("outputs/table1/results.json"))
    ap.add_argument("--table2", type=Path, default=Path("outputs/table2/results.json"))
    ap.add_argument("--notes", type=Path, default=Path("docs/results_notes.md"),
                    help="Markdown appended verbatim: what the numbers say, by topic")
    ap.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    a = ap.parse_args()
    parts = ["# Measured results", "",
             "Generated by `python scripts/write_results.py`: the tables from the runs' results.json files (every "
             "number in them comes from those files), then what they say (docs/results_notes.md). Toy world and "
             "teacher: docs/TOY_WORLD.md, docs/TEACHER.md.", ""]
    kept = kept_sections(a.out)
    for f, make, key in ((a.demo, demo_section, "`make demo`"), (a.reproduce, repro_section, "Reproduction (Tables"),
                         (a.table1, methods_table_section, "Table 1"), (a.table2, methods_table_section, "Table 2")):
        if f.is_file():
            parts += [make(json.loads(f.read_text())), ""]
        elif key in kept:
            parts += [kept[key], ""]
    if a.notes and a.notes.is_file():
        parts += [a.notes.read_text()]
    a.out.write_text("\n".join(parts) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
