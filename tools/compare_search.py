"""Reads JSON lines of `cliprt bench --workload search --json` (cpu f32/bf16, cuda) and `tools/bench_faiss.py --json`
on stdin and prints one table: per (gallery, dim, queries, k), queries/s of each side and the ratios."""

import json
import re
import sys

rows = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if not isinstance(m, dict) or "items_per_s" not in m:
        continue
    if "runtime" in m:
        key, name = (m["gallery"], m["dim"], m["batch"], m["k"]), m["runtime"]
    else:
        n, d = map(int, re.match(r"gallery-(\d+)x(\d+)", m["arch"]).groups())
        where = "cuda" if m.get("device", "cpu").startswith("cuda") else m["precision"]
        key, name = (n, d, m["batch"], m["k"]), f"cliprt-{where}"
    rows.setdefault(key, {})[name] = m["items_per_s"]

seen = {n for r in rows.values() for n in r}
names = [n for n in ["cliprt-f32", "cliprt-bf16", "cliprt-cuda", "faiss", "numpy"] if n in seen]
print(f"{'gallery':>8} {'dim':>4} {'Q':>5} {'k':>5} " + " ".join(f"{n:>12}" for n in names) +
      f" {'f32/faiss':>9} {'bf16/faiss':>10} {'f32/numpy':>9} {'cuda/f32':>8}")
for key in sorted(rows):
    r = rows[key]
    cell = lambda n: f"{r[n]:>12.1f}" if n in r else f"{'-':>12}"
    ratio = lambda a, b: f"{r[a] / r[b]:.2f}" if a in r and b in r else "-"
    print(f"{key[0]:>8} {key[1]:>4} {key[2]:>5} {key[3]:>5} " + " ".join(cell(n) for n in names) +
          f" {ratio('cliprt-f32', 'faiss'):>9} {ratio('cliprt-bf16', 'faiss'):>10} {ratio('cliprt-f32', 'numpy'):>9}"
          f" {ratio('cliprt-cuda', 'cliprt-f32'):>8}")
