"""Summarizes tools/compare_cpu.sh's JSON lines: per (arch, workload, batch), the fastest cliprt mode against the
fastest peer mode, and cliprt f32 against the fastest f32 peer.

    python3 tools/compare_table.py target/compare_cpu.jsonl

cliprt rows come from `cliprt bench --json` (they carry `engine` and `peak_fraction`); peer rows from
tools/bench_torch.py --json (`runtime`, `precision`). PyTorch's text rows padded to 77 tokens are left out of the
"fastest peer" choice only in the sense that they are never fastest; every row is listed.
"""

import json
import sys
from collections import defaultdict


def main(path):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["arch"], r["workload"], r["batch"])].append(r)
    print(f"{'arch':<10} {'workload':<6} {'batch':>5}  {'cliprt best (engine)':<28} {'%peak':>6}  "
          f"{'best peer':<30} {'ratio':>6}  {'cliprt f32':>10} {'best f32 peer':<26} {'ratio':>6}")
    for (arch, workload, batch), rs in sorted(groups.items()):
        ours = [r for r in rs if "engine" in r]
        peers = [r for r in rs if "runtime" in r]
        if not ours or not peers:
            continue
        best = max(ours, key=lambda r: r["items_per_s"])
        peer = max(peers, key=lambda r: r["items_per_s"])
        f32 = [r for r in ours if r["precision"] == "f32"]
        f32_peers = [r for r in peers if r["precision"] in ("fp32", "f32")]
        ours_txt = f"{best['items_per_s']:.2f} ({best['engine']})"
        peer_txt = f"{peer['items_per_s']:.2f} ({peer['runtime']} {peer['precision']})"
        line = (f"{arch:<10} {workload:<6} {batch:>5}  {ours_txt:<28} {100 * best['peak_fraction']:>5.1f}%  "
                f"{peer_txt:<30} {best['items_per_s'] / peer['items_per_s']:>5.2f}×")
        if f32 and f32_peers:
            a, b = f32[0], max(f32_peers, key=lambda r: r["items_per_s"])
            peer_f32 = f"{b['items_per_s']:.2f} ({b['runtime']})"
            line += f"  {a['items_per_s']:>10.2f} {peer_f32:<26} {a['items_per_s'] / b['items_per_s']:>5.2f}×"

        print(line)
    print()
    print("every row (items/s):")
    for r in sorted(rows, key=lambda r: (r["arch"], r["workload"], r["batch"], -r["items_per_s"])):
        who = f"cliprt {r['engine']}" if "engine" in r else f"{r['runtime']} {r['precision']}"
        seq = r.get("seq") or "-"
        print(f"  {r['arch']:<10} {r['workload']:<6} {r['batch']:>5} {seq:>4}  {who:<32} {r['items_per_s']:>9.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/compare_cpu.jsonl")
