"""Summarizes tools/compare_cpu.sh's JSON lines: per (arch, workload, batch), the fastest cliprt mode against the
fastest peer mode, and cliprt f32 against the fastest f32 peer; with several rounds (rows tagged `round`), each
contestant's best round, and the range of the same ratios taken round by round.

    python3 tools/compare_table.py target/compare_cpu.jsonl

cliprt rows come from `cliprt bench --json` (they carry `engine` and `peak_fraction`); peer rows from
tools/bench_torch.py --json (`runtime`, `precision`). PyTorch's text rows padded to 77 tokens are left out of the
"fastest peer" choice only in the sense that they are never fastest; every row is listed.
"""

import json
import sys
from collections import defaultdict


def who(r):
    """The contestant a row measures: a cliprt engine or a peer runtime at a precision."""
    return f"cliprt {r['engine']}" if "engine" in r else f"{r['runtime']} {r['precision']}"


def best_per_contestant(rows):
    """Each contestant's fastest row: with tools/compare_cpu.sh's ROUNDS > 1, its best round."""
    best = {}
    for r in rows:
        if who(r) not in best or r["items_per_s"] > best[who(r)]["items_per_s"]:
            best[who(r)] = r
    return list(best.values())


def ratios(ours, peers):
    """(fastest cliprt row / fastest peer row, cliprt f32 / fastest f32 peer or None) over `ours` and `peers`."""
    best = max(ours, key=lambda r: r["items_per_s"])
    peer = max(peers, key=lambda r: r["items_per_s"])
    f32 = [r for r in ours if r["precision"] == "f32"]
    f32_peers = [r for r in peers if r["precision"] in ("fp32", "f32")]
    f32_ratio = None
    if f32 and f32_peers:
        f32_ratio = (max(r["items_per_s"] for r in f32) /
                     max(r["items_per_s"] for r in f32_peers))
    return best, peer, best["items_per_s"] / peer["items_per_s"], f32_ratio


def spread(values):
    values = [v for v in values if v is not None]
    return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else "-"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["arch"], r["workload"], r["batch"])].append(r)
    rounds = sorted({r.get("round", 1) for r in rows})
    print(f"{len(rounds)} round(s); each contestant's best round is compared, and the ratio's range over the rounds "
          "(each round against itself) is printed after it")
    print(f"{'arch':<10} {'workload':<6} {'batch':>5}  {'cliprt best (engine)':<28} {'%peak':>6}  "
          f"{'best peer':<30} {'ratio':>6} {'rounds':>10}  {'cliprt f32':>10} {'best f32 peer':<26} {'ratio':>6} "
          f"{'rounds':>10}")
    for (arch, workload, batch), rs in sorted(groups.items()):
        if not any("engine" in r for r in rs) or not any("runtime" in r for r in rs):
            continue
        kept = best_per_contestant(rs)
        best, peer, ratio, f32_ratio = ratios([r for r in kept if "engine" in r], [r for r in kept if "runtime" in r])
        per_round = []
        for n in rounds:
            ours = [r for r in rs if "engine" in r and r.get("round", 1) == n]
            peers = [r for r in rs if "runtime" in r and r.get("round", 1) == n]
            if ours and peers:
                per_round.append(ratios(ours, peers)[2:])
        ours_txt = f"{best['items_per_s']:.2f} ({best['engine']})"
        peer_txt = f"{peer['items_per_s']:.2f} ({peer['runtime']} {peer['precision']})"
        line = (f"{arch:<10} {workload:<6} {batch:>5}  {ours_txt:<28} {100 * best['peak_fraction']:>5.1f}%  "
                f"{peer_txt:<30} {ratio:>5.2f}× {spread(r[0] for r in per_round):>10}")
        if f32_ratio is not None:
            f32 = max((r for r in kept if r.get("precision") == "f32" and "engine" in r),
                      key=lambda r: r["items_per_s"])
            b = max((r for r in kept if "runtime" in r and r["precision"] in ("fp32", "f32")),
                    key=lambda r: r["items_per_s"])
            peer_f32 = f"{b['items_per_s']:.2f} ({b['runtime']})"
            line += (f"  {f32['items_per_s']:>10.2f} {peer_f32:<26} {f32_ratio:>5.2f}× "
                     f"{spread(r[1] for r in per_round):>10}")
        print(line)
    print()
    print("every row (items/s):")
    for r in sorted(rows, key=lambda r: (r["arch"], r["workload"], r["batch"], who(r), r.get("round", 1))):
        seq = r.get("seq") or "-"
        print(f"  {r['arch']:<10} {r['workload']:<6} {r['batch']:>5} {seq:>4}  round {r.get('round', 1)}  "
              f"{who(r):<32} {r['items_per_s']:>9.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/compare_cpu.jsonl")
