"""The reference side of `cliprt bench --workload search`: exact inner-product top-k over a random normalized
gallery with faiss-cpu (IndexFlatIP) and with numpy (matmul + argpartition + sort of the k), same sizes, same thread
count, items/s meaning queries per second.

    tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/bench_faiss.py --threads 2 --gallery 1000000 --dim 512 --queries 64 --k 10
    cliprt bench --threads 2 --workload search --gallery 1000000 --dim 512 --queries 64 --k 10

The gallery is built once per (gallery, dim) and is not timed; a search is timed from the query matrix to the
top-k indices and scores. numpy's BLAS thread count is set through the environment before numpy loads.
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gallery", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, nargs="+", default=[512])
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--k", type=int, nargs="+", default=[10])
    ap.add_argument("--runtime", nargs="+", default=["faiss", "numpy"], choices=["faiss", "numpy"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


args = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402  (after the thread variables)


def time_runs(fn):
    for _ in range(args.warmup):
        fn()
    ms = []
    for _ in range(args.reps):
        t = time.perf_counter()
        fn()
        ms.append(1000 * (time.perf_counter() - t))
    return statistics.median(ms), min(ms), max(ms)


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def numpy_search(xb, xq, k):
    s = xq @ xb.T
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def main():
    faiss = None
    if "faiss" in args.runtime:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    if not args.json:
        print(f"numpy {np.__version__}" + (f", faiss {faiss.__version__}" if faiss else "") +
              f", {args.threads} threads")
        print(f"{'gallery':>9} {'dim':>5} {'queries':>7} {'k':>5} {'runtime':>8} {'items/s':>10} {'ms':>10} "
              f"{'spread (min–max)':>18}")
    for n in args.gallery:
        for d in args.dim:
            xb = unit_rows(n, d, 1)
            index = None
            if faiss:
                index = faiss.IndexFlatIP(d)
                index.add(xb)
            for nq in args.queries:
                xq = unit_rows(nq, d, 2)
                for k in args.k:
                    runs = []
                    if index is not None:
                        runs.append(("faiss", lambda: index.search(xq, k)))
                    if "numpy" in args.runtime:
                        runs.append(("numpy", lambda: numpy_search(xb, xq, k)))
                    for name, fn in runs:
                        ms, lo, hi = time_runs(fn)
                        qps = nq / ms * 1000
                        if args.json:
                            print(json.dumps(dict(gallery=n, dim=d, batch=nq, k=k, runtime=name,
                                                  threads=args.threads, items_per_s=qps, ms_per_batch=ms,
                                                  ms_min=lo, ms_max=hi)), flush=True)
                        else:
                            print(f"{n:>9} {d:>5} {nq:>7} {k:>5} {name:>8} {qps:>10.2f} {ms:>10.2f} "
                                  f"{f'{lo:.1f}–{hi:.1f}':>18}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
