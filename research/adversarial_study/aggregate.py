"""usage: python research/adversarial_study/aggregate.py STUDY_DIR

The adversarial-equilibrium study's table from the rows `vpae ablate` wrote (every variant with every seed it
has): mean +- std over seeds of the oracle metrics and the discriminator signals, and each variant judged
against C-SDS alone with the project's rule (gap > sum of the two stds). Markdown on stdout."""
import json
import sys
from pathlib import Path

from vpae.toy.ablate import CONTROL, JUDGED_METRICS, STUDY, VARIANTS, _slug, aggregate, judge

root = Path(sys.argv[1])
names = [n for n in list(VARIANTS) + list(STUDY) if (root / _slug(n)).is_dir()]
per_seed = {n: [json.loads(p.read_text()) for p in sorted((root / _slug(n)).glob("seed_*/row.json"))] for n in names}
per_seed = {n: rows for n, rows in per_seed.items() if rows}
agg = aggregate(per_seed)
cols = list(JUDGED_METRICS) + ["probe/low_noise_acc", "d/accuracy_late", "d/bin0_accuracy_late", "probe/acc_last",
                               "adv/scale_late"]
short = {c: c.split("/")[-1] for c in cols}
print("| variant | seeds | " + " | ".join(short[c] for c in cols) + " |")
print("|---|---|" + "---|" * len(cols))
for n, a in agg.items():
    cells = []
    for c in cols:
        if c not in a:
            cells.append("")
        elif a["seeds"] > 1:
            cells.append(f"{a[c]:.3f} +- {a[c + '_std']:.3f}" if abs(a[c]) < 10 else f"{a[c]:.1f} +- {a[c + '_std']:.1f}")
        else:
            cells.append(f"{a[c]:.3f}" if abs(a[c]) < 10 else f"{a[c]:.1f}")
    print(f"| {n} | {a['seeds']} | " + " | ".join(cells) + " |")
claims = [(f"{n} over C-SDS alone", n, CONTROL, "better") for n in agg if n != CONTROL and agg[n]["seeds"] > 1]
print()
for v in judge(agg, claims, JUDGED_METRICS + ("probe/low_noise_acc_error",)):
    print(f"- {v['claim']} [{v['metric']}]: gap {v['gap']:+.3f}, spread {v['spread']:.3f} -> {v['verdict']}")
