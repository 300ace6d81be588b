"""Embed webdataset shards on a Ray cluster with Ray Data: cliprt actors, one model each.

    python -m cliprt.ray --model clip-vit-base-patch32 --shards "data/{00000..00099}.tar" --out emb/ \\
        --concurrency 4 --threads 2

Each shard gets out/NAME.npy (float32 [rows, dim], unit rows) and out/NAME.json (keys, captions, json metadata,
skipped samples with reasons), written all or nothing by the actor that embedded it, exactly as
`cliprt index --shards` writes them. A shard that already has a finished output from this model is passed over,
so a killed or failed job, rerun, redoes only unfinished shards. A shard that cannot be read (missing, truncated,
corrupt) is listed with its reason and the job goes on.

Cluster: `ray.init()` starts a local cluster when there is none, and joins the cluster named by `RAY_ADDRESS`
(or `--address`) otherwise. On a multi-node cluster every node needs cliprt installed (`pip install` of this
repository, or a runtime_env) and must see the model folder, the shards and the output folder at the same paths
(a shared file system). `--concurrency` actors run at once; each holds one model and reserves `--threads` CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

import cliprt


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("cliprt.ray needs Ray Data: pip install 'ray[data]' (or the package's [ray] extra)") from e
    return ray


class ShardEmbedder:
    """A Ray Data actor: loads the model once, then embeds the shards of each batch it is given."""

    def __init__(self, model: str, out_dir: str, threads: int, batch: int, precision: str, device: str,
                 force: bool):
        self.model = cliprt.Model(model, device=device, precision=precision, threads=threads)
        self.out_dir = out_dir
        self.batch = batch
        self.force = force

    def __call__(self, rows: dict) -> dict:
        out = {"shard": [], "rows": [], "skipped": [], "already_done": [], "error": [], "seconds": []}
        for shard in rows["shard"]:
            shard = str(shard)
            start = time.perf_counter()
            try:
                r = cliprt.embed_shard(self.model, shard, self.out_dir, batch=self.batch, force=self.force)
                result = (r["rows"], json.dumps(r["skipped"]), r["already_done"], "")
            except cliprt.CliprtError as e:
                result = (0, "[]", False, str(e))
            out["shard"].append(shard)
            out["rows"].append(result[0])
            out["skipped"].append(result[1])
            out["already_done"].append(result[2])
            out["error"].append(result[3])
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.array(v, dtype=object if k in ("shard", "skipped", "error") else None)
                for k, v in out.items()}


def embed_shards(
    shards: Union[str, Sequence[str]],
    model: str,
    out_dir: str,
    *,
    concurrency: int = 1,
    threads: int = 1,
    batch: int = 32,
    precision: str = "f32",
    device: str = "cpu",
    force: bool = False,
    progress: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Embeds every shard (patterns with brace ranges expand) on the Ray cluster `ray.init()` connects to.

    Returns {"embedded": [result], "already_done": [shard], "failed": [(shard, reason)], "rows": int,
    "seconds": float}; each result is {"shard", "rows", "skipped": [[key, reason]]}. `progress` is called with each
    shard's result as it finishes (default: a line on stderr).
    """
    ray = _import_ray()

    shard_list = cliprt.expand_shards(shards)
    if not shard_list:
        raise cliprt.InputError("no shards given")
    cliprt._cliprt.check_shard_names(shard_list)
    os.makedirs(out_dir, exist_ok=True)
    if not ray.is_initialized():
        ray.init()
    if progress is None:
        progress = _print_progress(len(shard_list))
    model = os.path.abspath(model)
    out_dir = os.path.abspath(out_dir)
    ds = ray.data.from_items([{"shard": os.path.abspath(s)} for s in shard_list],
                             override_num_blocks=len(shard_list))
    ds = ds.map_batches(
        ShardEmbedder,
        fn_constructor_kwargs=dict(model=model, out_dir=out_dir, threads=threads, batch=batch,
                                   precision=precision, device=device, force=force),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=threads,
    )
    report = {"embedded": [], "already_done": [], "failed": [], "rows": 0}
    start = time.perf_counter()
    for row in ds.iter_rows():
        shard = str(row["shard"])
        if row["error"]:
            report["failed"].append((shard, str(row["error"])))
        elif row["already_done"]:
            report["already_done"].append(shard)
        else:
            rows = int(row["rows"])
            report["embedded"].append({"shard": shard, "rows": rows, "skipped": json.loads(row["skipped"])})
            report["rows"] += rows
        progress(dict(row))
    report["seconds"] = time.perf_counter() - start
    return report


def _print_progress(total: int) -> Callable[[dict], None]:
    state = {"done": 0, "rows": 0, "start": time.perf_counter()}

    def show(row: dict) -> None:
        state["done"] += 1
        state["rows"] += int(row["rows"]) if not row["already_done"] else 0
        rate = state["rows"] / max(time.perf_counter() - state["start"], 1e-9)
        what = ("failed: " + str(row["error"])) if row["error"] else (
            "already done" if row["already_done"] else f"{int(row['rows'])} images")
        print(f"[{state['done']}/{total}] {row['shard']}: {what} ({rate:.1f} images/s)", file=sys.stderr,
              flush=True)

    return show


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cliprt.ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (on every node)")
    p.add_argument("--shards", required=True, action="append",
                   help='shard paths or patterns, e.g. "data/{00000..00099}.tar" (repeatable)')
    p.add_argument("--out", required=True, help="output folder: NAME.npy + NAME.json per shard")
    p.add_argument("--concurrency", type=int, default=1, help="cliprt actors (one model each)")
    p.add_argument("--threads", type=int, default=1, help="compute threads (and reserved CPUs) per actor")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.add_argument("--precision", default="f32", help="f32, bf16 or i16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="redo shards that already have an output")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    a = p.parse_args(None if argv is None else list(argv))
    ray = _import_ray()
    ray.init(address=a.address)
    report = embed_shards(a.shards, a.model, a.out, concurrency=a.concurrency, threads=a.threads, batch=a.batch,
                          precision=a.precision, device=a.device, force=a.force)
    for r in report["embedded"]:
        for key, reason in r["skipped"]:
            print(f"skipped: {r['shard']}:{key}: {reason}", file=sys.stderr)
    for shard, reason in report["failed"]:
        print(f"failed shard: {reason}", file=sys.stderr)
    print(f"embedded {len(report['embedded'])} shards ({report['rows']} images) into {a.out} in "
          f"{report['seconds']:.1f} s; {len(report['already_done'])} already done; {len(report['failed'])} failed")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
