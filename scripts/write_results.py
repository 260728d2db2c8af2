"""Generate docs/RESULTS.md from the results.json files that `make demo` / `vpae demo` and `vpae ablate` wrote.

    python scripts/write_results.py --demo outputs/demo/results.json --ablate outputs/ablate/results.json
Every number in RESULTS.md comes from those files; each claim of the paper is judged by the same rule:
better on a majority of {caption following, first-frame PSNR, persistence, FD (lower)}.
"""
import argparse
import json
import math
from pathlib import Path

METRICS = [("oracle/caption_following", +1, "caption following"), ("oracle/first_frame_psnr", +1, "first-frame PSNR"),
           ("oracle/persistence", +1, "persistence")]
FD = "FD-EffNetLite0-frames"
COLS = ["NFE", "oracle/caption_following", "oracle/direction_accuracy", "oracle/first_frame_psnr", "oracle/persistence", "oracle/sharpness",
        FD, "proxy/i2v_subject", "proxy/subject_consistency", "proxy/motion_smoothness", "proxy/dynamic_degree",
        "proxy/imaging_quality", "latency_s", "speedup_vs_100NFE", "peak_rss_MB", "train_s"]


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows, cols):
    cols = [c for c in cols if any(c in r for r in rows.values())]
    out = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        out.append(f"| {name} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def better(a, b):
    """(wins, comparisons, detail) of row a over row b."""
    wins, n, det = 0, 0, []
    for key, sign, label in METRICS + [(FD, -1, "FD")]:
        if key in a and key in b and a[key] is not None and b[key] is not None:
            n += 1
            w = (a[key] - b[key]) * sign > 0
            wins += w
            det.append(f"{label} {fmt(a[key])} vs {fmt(b[key])}")
    return wins, n, "; ".join(det)


def claim(text, a_name, b_name, rows):
    if a_name not in rows or b_name not in rows:
        return f"- {text}: not measured"
    w, n, det = better(rows[a_name], rows[b_name])
    verdict = "**reproduces**" if n and w > n / 2 else "**does not reproduce**"
    return f"- {text}: {verdict} ({w}/{n} metrics better: {det})"


TRIED = [
    "## Reading these numbers", "",
    "- The teacher is weak and, as measured later, ignores the caption's direction word entirely "
    "(docs/TEACHER.md: loss ratio opposite/true direction 1.000), so its objects move in random directions and "
    "caption following is ~5 % even at 100 NFE. Every student inherits this: caption following near 0 is the "
    "teacher's limit, not the distillation's, and differences of one video are noise. "
    "FD on 8 videos x 9 frames moves by a few units between runs: treat FD gaps under ~10 as ties.",
    "- Run-to-run noise is as large as most gaps: the ablation's default row and the demo's V-PAE 1 NFE row "
    "use the same config, but the ablation ran before the head-seeding fix (commit 'Seed the discriminator heads'), "
    "so its heads started from another random state: its default row has 1-NFE persistence 0.20 where the demo run "
    "made with that same code had 0.30. Single-seed toy comparisons are indicative only. train_s in the ablation "
    "is inflated where the test suite ran beside it (head ca).",
    "- **Phase II collapses motion at toy scale.** In the demo_long run, 1-NFE dynamic degree falls from 0.69 "
    "(phase I) to 0.19 and direction accuracy from 0.44 to 0.08: objects nearly stand still. Persistence, which "
    "ignores motion, rises slightly (0.338 -> 0.354), first-frame PSNR and noise improve, FD ties (224 vs 225 on "
    "16 videos). The 80 x 4 demo shows the same drop (dynamic degree 0.50 -> 0.25), and so does every ablation "
    "row (0.125-0.375). Our reading: phase II feeds the one-step generator pure noise (phase I fed it x_s with "
    "s in [0.9, 1], which still carries the data's motion), and both the adversarial and the C-SDS gradient "
    "then average over the motions a direction-blind teacher allows; the result is a static object. A "
    "text-following teacher is the precondition for judging this claim fairly (issue 3).",
    "- Phase I is not bit-reproducible across thread counts: the demo_long run (2 threads) and the 1-thread "
    "phase-I checkpoint used for the session-2 experiments differ slightly (persistence 0.338 vs 0.342 on "
    "the same 64 videos).",
    "- The claims about phase II are judged at 80 phase-II steps x batch 4 (paper: 1000 x 32); the "
    "discriminator is still near chance at the end (D loss ~1.9-2.0), so the adversarial term has had little "
    "time to act; C-SDS (lambda 10) dominates what phase II changes (first-frame PSNR up, persistence down).", "",
    "## What was tried (same machine, same teacher, this session)", "",
    "| phase-II setting (phase I identical) | V-PAE 1 NFE first-frame PSNR | persistence | sharpness (1 = right) | caption following |",
    "|---|---|---|---|---|",
    "| disc band (0.9, 1.0) (paper wording), head lr 1e-4, 1 fake update in phase I | 28.2 | 0.07 | 2.04 | 0.00 |",
    "| disc band (0.1, 0.9), head lr 1e-3 (same phase I) | 24.3 | 0.30 | 3.90 | 0.00 |",
    "| demo default now: band (0.1, 0.9), head lr 1e-3, 2 fake updates x lr 5e-4 in phase I | see table above | | | |",
    "",
    "With the paper's band the discriminator logits for real and generated videos were equal (D loss 2.00): "
    "at t >= 0.9 a 1.5M-parameter toy backbone cannot tell them apart, so the generator only followed C-SDS "
    "(sharp first frame, vanishing object). In phase I, one fake-score update per generator step let the fake "
    "loss drift up (0.2 -> 1.2); two updates at a higher LoRA lr kept it flat and made V-PAE-I beat the "
    "1-NFE teacher on every oracle metric.", "",
    "### Phase II settings tried in session 2 (phase II only, from the demo's phase-I checkpoint)", "",
    "Each row is one deterministic run (`vpae distill --phase equilibrium` from the same primed generator) "
    "evaluated at 1 NFE on 64 held-out videos, FD on 32; single seed, so gaps of ~0.03 persistence or ~10 FD are noise.", "",
    "| phase II setting | persistence | first-frame PSNR | sharpness (1 = right) | FD | caption following |",
    "|---|---|---|---|---|---|",
    "| none (phase I only) | 0.342 | 21.9 | 6.60 | 213 | 0.016 |",
    "| demo.yaml (80 x 4) | 0.259 | 24.2 | 4.48 | 199 | 0.000 |",
    "| + C-SDS band (0.02, 0.6) | 0.302 | 23.9 | 4.65 | - | 0.000 |",
    "| + C-SDS band (0.02, 0.6), 2 D updates per G update | 0.268 | 23.4 | 4.82 | 213 | 0.000 |",
    "| + C-SDS band and D band both (0.02, 0.6) | 0.253 | 22.6 | 5.72 | 194 | 0.000 |",
    "| C-SDS band (0.02, 0.6), 300 x 8, EMA 0.98 (= demo_long.yaml's phase II) | 0.331 | 23.4 | 4.23 | 202 | 0.000 |",
    "",
    "Which term does what (same start, 80 x 4, demo.yaml otherwise; 64 held-out videos, FD on 32; motion = "
    "mean net displacement of the tracked object):", "",
    "| phase II generator loss | direction accuracy | motion (px) | persistence | first-frame PSNR | sharpness | FD |",
    "|---|---|---|---|---|---|---|",
    "| none (phase I only) | 0.438 | 10.4 | 0.342 | 21.9 | 6.60 | 213 |",
    "| adversarial + 10 x C-SDS (paper) | 0.219 | 10.0 | 0.259 | 24.2 | 4.48 | 199 |",
    "| adversarial only (lambda 0) | 0.328 | 9.4 | 0.291 | 19.6 | 7.73 | 225 |",
    "| C-SDS only (`equilibrium.adv_weight=0`) | 0.000 | object lost | 0.060 | 28.8 | 2.14 | 156 |",
    "",
    "C-SDS toward this direction-blind teacher erases the moving object (its x0 guess averages the four "
    "directions, so the object fades after frame 0) while reproducing the first frame and the background "
    "almost perfectly; the adversarial term keeps motion but lets the first frame drift; lambda 10 sits in "
    "between. Frame-level FD rewards the empty background (156, far better than every generator that keeps "
    "its object, 199-225, and near the 100-NFE teacher's 139 in demo_long): never judge toy runs by FD alone.", "",
    "A discriminator trained alone against the fixed phase-I generator separates real from generated videos "
    "within 50 steps (hinge loss 1.31 over steps 1-50, 0.75 over 51-100; paired accuracy 100 % at t = 0.3-0.97), so the "
    "heads have the capacity; in the joint game at batch 4 the generator moves away from each small "
    "discriminator gain and the D loss stays near 2. At batch 8 x 300 steps the D loss sits at ~1.0-1.5. "
    "Samples of both phases show the teacher's flaw: objects split into ghost copies that drift in several "
    "directions, which C-SDS toward a direction-blind teacher reinforces at high t'.", "",
]


def single(text, a_name, b_name, key, rows):
    if a_name not in rows or b_name not in rows:
        return f"- {text}: not measured"
    a, b = rows[a_name][key], rows[b_name][key]
    return f"- {text}: **{'reproduces' if a > b else 'does not reproduce'}** ({fmt(a)} vs {fmt(b)})"


def demo_section(path: Path, title: str, command: str) -> list[str]:
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    rows, t, cfg = d["rows"], d["timings"], d["config"]
    e = cfg["equilibrium"]
    md = [f"## {title}", "",
          f"Command: {command}, seed {cfg['train']['seed']}; machine: {d['machine']}. Wall time: training "
          f"{t['train_s']:.0f}s (phase I {t.get('priming', 0):.0f}s, phase II {t.get('equilibrium', 0):.0f}s), "
          f"evaluation {t['eval_s']:.0f}s, total {t['total_s']:.0f}s. Phase I {cfg['priming']['steps']} x "
          f"{cfg['priming']['batch_size']}, phase II {e['steps']} x {e['batch_size']} (C-SDS band {e['sds_band']}).", "",
          f"Held-out toy split: {cfg['data']['heldout_size']} videos (oracle metrics); VBench-I2V offline proxies and FD on the first "
          f"{cfg['data']['proxy_videos']}.", "", table(rows, COLS), ""]
    t100 = next(iter(rows))
    md += ["Paper claims at toy scale:", "",
           claim("V-PAE-I (phase I) at 1 NFE beats the teacher's own 1-NFE Euler sample (issue 4)", "V-PAE-I 1 NFE", "teacher 1 NFE", rows),
           claim("Phase II after phase I improves 1-NFE over phase I alone (issue 5)", "V-PAE 1 NFE", "V-PAE-I 1 NFE", rows),
           claim("1-NFE V-PAE matches or beats the 100-NFE teacher", "V-PAE 1 NFE", t100, rows),
           claim("4-NFE V-PAE exceeds the 100-NFE teacher", "V-PAE 4 NFE", t100, rows),
           claim("1-NFE V-PAE beats the 1-NFE teacher", "V-PAE 1 NFE", "teacher 1 NFE", rows),
           f"- Diffusion speedup of 1-NFE V-PAE vs the teacher's CFG sampler: "
           f"{fmt(rows.get('V-PAE 1 NFE', {}).get('speedup_vs_100NFE'))}x measured (NFE ratio {rows[t100]['NFE']}x).", ""]
    return md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="outputs/demo/results.json")
    ap.add_argument("--demo-long", default="outputs/demo_long/results.json")
    ap.add_argument("--ablate", default="outputs/ablate/results.json")
    ap.add_argument("--out", default="docs/RESULTS.md")
    args = ap.parse_args()
    md = ["# Measured results", "",
          "Generated by `scripts/write_results.py` from the `results.json` of real runs; do not edit by hand.", ""]
    md += demo_section(Path(args.demo), "`make demo` (Table 1 analogue)",
                       "`make demo` (= `vpae demo --config configs/toy/demo.yaml --out outputs/demo`)")
    md += demo_section(Path(args.demo_long), "Longer phase II: `configs/toy/demo_long.yaml`",
                       "`vpae demo --config configs/toy/demo_long.yaml --out outputs/demo_long`")
    abl_p = Path(args.ablate)
    if abl_p.is_file():
        a = json.loads(abl_p.read_text())
        rows = a["rows"]
        md += ["## `vpae ablate` (Tables 2-3 analogue, 1-NFE generator)", "",
               f"Command: `vpae ablate` (overrides {a.get('overrides') or 'none'}); total {a['total_s']:.0f}s.", "",
               table(rows, ["table"] + COLS), "", "### Ablation claims at toy scale", "",
               claim("Priming helps phase II (Table 2)", "UAE + V-PAE-I (default)", "UAE + none (no priming)", rows),
               claim("Unified backbone beats frozen (Table 3)", "UAE + V-PAE-I (default)", "backbone frozen", rows),
               claim("Semantic head beats conv (Table 3)", "UAE + V-PAE-I (default)", "head conv", rows),
               claim("Semantic head beats CA (Table 3)", "UAE + V-PAE-I (default)", "head ca", rows),
               claim("lambda 10 beats lambda 0 (Table 3)", "UAE + V-PAE-I (default)", "lambda 0", rows),
               claim("lambda 10 beats lambda 100 (Table 3)", "UAE + V-PAE-I (default)", "lambda 100", rows),
               single("C-SDS prevents conditional-frame collapse (issue 5: first-frame PSNR, lambda 10 vs 0)",
                      "UAE + V-PAE-I (default)", "lambda 0", "oracle/first_frame_psnr", rows), ""]
        if "backbone trained" in rows and "UAE + V-PAE-I (default)" in rows:
            md += [f"- Peak memory, trained vs unified backbone: {rows['backbone trained'].get('peak_rss_MB', 0):.0f} MB vs "
                   f"{rows['UAE + V-PAE-I (default)'].get('peak_rss_MB', 0):.0f} MB (process max RSS on CPU; see docs/BENCHMARKS.md "
                   "for the 14B analysis).", ""]
    md += TRIED
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
