"""Reads JSON lines of `cliprt bench --json` and `tools/bench_torch.py --json` on stdin (other lines are ignored)
and prints one table: per (arch, workload, batch), cliprt's items/s next to PyTorch's and their ratio."""

import json
import sys

cliprt, torch = {}, {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if not isinstance(m, dict) or "items_per_s" not in m:
        continue
    key = (m["arch"], m["workload"], m["batch"])
    if "runtime" in m:
        # Text: compare against PyTorch padded to the longest prompt (its fastest honest setting).
        if m["runtime"] in ("torch", "torch-padlong"):
            torch[key] = m
    else:
        cliprt[key] = m

print(f"{'arch':<10} {'workload':<8} {'batch':>5} {'cliprt items/s':>15} {'ms':>8} {'%peak':>6} "
      f"{'torch fp16 items/s':>19} {'ms':>8} {'ratio':>6}")
for key in sorted(set(cliprt) | set(torch)):
    c, t = cliprt.get(key), torch.get(key)
    ci = f"{c['items_per_s']:.1f}" if c else "-"
    cm = f"{c['ms_per_batch']:.2f}" if c else "-"
    pf = c.get("peak_fraction") if c else None  # null when the GPU's peak is unknown
    cp = f"{100 * pf:.1f}" if isinstance(pf, (int, float)) else "-"
    ti = f"{t['items_per_s']:.1f}" if t else "-"
    tm = f"{t['ms_per_batch']:.2f}" if t else "-"
    ratio = f"{c['items_per_s'] / t['items_per_s']:.2f}" if c and t else "-"
    print(f"{key[0]:<10} {key[1]:<8} {key[2]:>5} {ci:>15} {cm:>8} {cp:>6} {ti:>19} {tm:>8} {ratio:>6}")
