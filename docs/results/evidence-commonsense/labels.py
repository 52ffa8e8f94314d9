"""Exploratory, not pre-registered: how often each configuration answers with a single label per task, and the
majority-label accuracy of these questions (the accuracy of always answering a task's most frequent gold label)."""
import collections
import glob
import json
import re
import statistics as st
import sys

TASKS = ["boolq", "piqa", "siqa", "winogrande", "arc-e", "arc-c", "obqa"]
root = sys.argv[1] if len(sys.argv) > 1 else "runs/studies/evidence-commonsense/runs"
gold = {}
by_conf = collections.defaultdict(list)
for d in sorted(x.rsplit("result.json", 1)[0] for x in glob.glob(f"{root}/*/result.json")):
    name = d.rstrip("/").split("/")[-1]
    conf = re.sub(r"-s\d+-[0-9a-f]+$", "", name) if not name.startswith("base") else "base"
    shares = []
    for t in TASKS:
        rows = [json.loads(l) for l in open(f"{d}eval/{t}/predictions.jsonl") if l.strip()]
        gold[t] = collections.Counter(r["gold"] for r in rows)
        c = collections.Counter(r["loglik_prediction"] for r in rows)
        shares.append(c.most_common(1)[0][1] / len(rows))
    by_conf[conf].append(shares)
maj = {t: gold[t].most_common(1)[0][1] / sum(gold[t].values()) for t in TASKS}
print("majority-label accuracy:", {t: round(100 * v, 1) for t, v in maj.items()}, "average",
      round(100 * sum(maj.values()) / len(maj), 1))
print("share of answers that are the run's most frequent label, mean over tasks (per seed):")
for conf, runs in by_conf.items():
    print(f"  {conf}: " + ", ".join(f"{100 * st.mean(s):.0f} %" for s in runs),
          "| tasks answered with one label in >= 95 % of questions:", [sum(x >= 0.95 for x in s) for s in runs])
