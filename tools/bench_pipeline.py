"""End-to-end throughput from webdataset shards on disk to embeddings written, side by side in one run:

- cliprt's Python API (`cliprt.embed_shard`, one process) and cliprt on Ray Data (`cliprt.ray`, a local cluster);
- a clip-retrieval-style PyTorch pipeline: tar members read with tarfile, PIL decode, transformers'
  CLIPImageProcessor, the transformers vision tower, normalized embeddings and metadata written per shard; with the
  decode either inline or in a torch DataLoader worker (clip-retrieval's layout), whichever is faster is its number.

Each at f32 and at its fastest precision (cliprt bf16 where the CPU has AVX512_BF16 or AMX, i16 on AVX2-only CPUs;
PyTorch bf16 weights). `--precisions f32,i16` on CPUs without native bf16, where PyTorch's bf16 is emulated (a few
images/s): there PyTorch's fastest mode is f32.
Also, with --tower: the Python API's ViT image tower at batch 32 against `cliprt bench` on the same folder (the two
alternated over 3 rounds, each side's best round compared, every round's ratio printed), and two Python threads
sharing one model (one compute thread each) against one thread.

    tools/.venv/bin/python tools/bench_pipeline.py --model tools/models/vit-b-32 --threads 2 --tower

The shards (photo-like JPEGs of 320-640 px, as img2dataset stores them) are generated once under --work.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def photo(rng, w, h):
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for c in range(3):
        f = rng.uniform(5, 40, 2)
        v = 128 + 80 * np.sin(x / f[0] + c) * np.cos(y / f[1]) + rng.normal(0, 8, (h, w))
        chans.append(v)
    return Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8), "RGB")


def make_shards(folder, shards, per_shard, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        path = os.path.join(folder, f"{s:05d}.tar")
        paths.append(path)
        if os.path.exists(path):
            continue
        with tarfile.open(path + ".tmp", "w") as t:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
                buf = io.BytesIO()
                photo(rng, w, h).save(buf, "JPEG", quality=90)
                for ext, data in [("jpg", buf.getvalue()), ("txt", f"caption {key}".encode()),
                                  ("json", json.dumps({"key": key, "width": w, "height": h}).encode())]:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        os.replace(path + ".tmp", path)
    return paths


def count_images(paths):
    return sum(1 for p in paths for m in tarfile.open(p).getmembers() if m.name.endswith(".jpg"))


def run_cliprt_api(model_dir, paths, out, threads, precision):
    import cliprt

    model = cliprt.Model(model_dir, precision=precision, threads=threads)
    cliprt.embed_shard(model, paths[0], out + "-warm", force=True)
    start = time.perf_counter()
    for p in paths:
        cliprt.embed_shard(model, p, out, force=True)
    return time.perf_counter() - start, model.precision


def run_cliprt_api_threads(model_dir, paths, out, threads, precision):
    """`threads` Python threads sharing one model, one compute thread each, shards dealt from a queue: while one
    thread decodes, the other computes."""
    from concurrent.futures import ThreadPoolExecutor

    import cliprt

    model = cliprt.Model(model_dir, precision=precision, threads=1)
    cliprt.embed_shard(model, paths[0], out + "-warm", force=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: cliprt.embed_shard(model, p, out, force=True), paths))
    return time.perf_counter() - start


def run_cliprt_ray(model_dir, paths, out, threads, precision, actors):
    """The whole job on a local Ray cluster (started beforehand): actor start and model load included."""
    import ray

    import cliprt.ray

    if not ray.is_initialized():
        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    cliprt.ray.embed_shards(paths, model_dir, out, concurrency=actors, threads=threads // actors,
                            precision=precision, force=True, progress=lambda row: None)
    return time.perf_counter() - start


class TorchShards:
    """Batches of (keys, captions, PIL-processed pixels) from the shards, as clip-retrieval's reader gives them."""

    def __init__(self, paths, processor, batch):
        self.paths, self.processor, self.batch = paths, processor, batch

    def __iter__(self):
        from PIL import Image

        for path in self.paths:
            samples = {}
            with tarfile.open(path) as t:
                for m in t:
                    key, ext = m.name.split(".", 1)
                    samples.setdefault(key, {})[ext] = t.extractfile(m).read()
            keys = list(samples)
            for i in range(0, len(keys), self.batch):
                chunk = keys[i:i + self.batch]
                images = [Image.open(io.BytesIO(samples[k]["jpg"])).convert("RGB") for k in chunk]
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                yield path, chunk, [samples[k].get("txt", b"").decode() for k in chunk], pixels


def run_torch(model_dir, paths, out, threads, dtype_name, workers):
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    torch.set_num_threads(threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = CLIPVisionModelWithProjection.from_pretrained(model_dir, dtype=dtype).eval()
    try:
        processor = CLIPImageProcessor.from_pretrained(model_dir)
    except OSError:  # no preprocessor_config.json: OpenAI's transform, as cliprt uses then
        processor = CLIPImageProcessor()
    os.makedirs(out, exist_ok=True)

    def embed(source):
        rows = {}
        with torch.inference_mode():
            for path, keys, captions, pixels in source:
                e = model(pixel_values=pixels.to(dtype)).image_embeds.float()
                e = torch.nn.functional.normalize(e, dim=-1).numpy()
                rows.setdefault(path, []).append((keys, captions, e))
                if len(rows) > 1:  # a shard is complete: write it
                    done = next(iter(rows))
                    write(done, rows.pop(done))
        for path, parts in rows.items():
            write(path, parts)

    def write(path, parts):
        name = os.path.basename(path)[:-4]
        np.save(os.path.join(out, name + ".npy"), np.concatenate([p[2] for p in parts]))
        meta = [{"key": k, "caption": c} for p in parts for k, c in zip(p[0], p[1])]
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(meta, f)

    embed(TorchShards(paths[:1], processor, 32))  # warm-up
    start = time.perf_counter()
    if workers == 0:
        embed(TorchShards(paths, processor, 32))
    else:
        loader = torch.utils.data.DataLoader(_Iterable(paths, processor), batch_size=None, num_workers=workers)
        embed(loader)
    return time.perf_counter() - start


class _Iterable:
    pass


def _make_iterable():
    import torch

    class Iterable(torch.utils.data.IterableDataset):
        def __init__(self, paths, processor):
            self.paths, self.processor = paths, processor

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            mine = self.paths if info is None else self.paths[info.id::info.num_workers]
            return iter(TorchShards(mine, self.processor, 32))

    return Iterable


def tower(model_dir, threads, precision, rounds=3, reps=5):
    """The image tower at batch 32: cliprt bench vs the Python API, and two Python threads vs one.

    The bench and the Python API alternate over `rounds` rounds (which goes first alternates too), and each keeps its
    best round's median: on a shared VM a neighbour slows one side for minutes (BENCHMARKS.md, Zen 3), and a single
    back-to-back pair compares the two sides under different neighbours. The per-round ratios are returned too."""
    import cliprt

    def bench_ips():
        out = subprocess.run([os.path.join(ROOT, "target", "release", "cliprt"), "bench", "--model", model_dir,
                              "--workload", "image", "--batch", "32", "--threads", str(threads), "--precision",
                              precision, "--reps", str(reps), "--json"], capture_output=True, text=True, check=True)
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]["items_per_s"]

    model = cliprt.Model(model_dir, precision=precision, threads=threads)
    pixels = np.random.default_rng(0).standard_normal((32, 3, model.image_size, model.image_size),
                                                      dtype=np.float32)
    model.embed_pixels(pixels)

    def python_ips():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.embed_pixels(pixels)
            times.append(time.perf_counter() - t)
        return 32 / statistics.median(times)

    bench_rounds, py_rounds = [], []
    for r in range(rounds):
        if r % 2:
            py_rounds.append(python_ips())
            bench_rounds.append(bench_ips())
        else:
            bench_rounds.append(bench_ips())
            py_rounds.append(python_ips())
    per_round = [p / b for p, b in zip(py_rounds, bench_rounds)]
    bench_ips, py_ips = max(bench_rounds), max(py_rounds)

    one = cliprt.Model(model_dir, precision=precision, threads=1)
    small = pixels[:8].copy()
    one.embed_pixels(small)
    n = 6

    def work():
        for _ in range(n):
            one.embed_pixels(small)

    t = time.perf_counter()
    work()
    single = time.perf_counter() - t
    ths = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    double = time.perf_counter() - t
    return bench_ips, py_ips, per_round, (2 * n / double) / (n / single)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "tools", "models", "vit-b-32"))
    p.add_argument("--threads", type=int, default=2)
    # 1536 images: Ray's actor start and model load (a few seconds) stay a small part of the job, as in real runs.
    p.add_argument("--shards", type=int, default=24)
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--work", default="/tmp/cliprt-bench-pipeline")
    p.add_argument("--precisions", default="f32,bf16")
    p.add_argument("--torch-workers", default="0,1", help="DataLoader workers to try for the PyTorch pipeline")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--tower", action="store_true", help="also the tower and thread-scaling checks")
    a = p.parse_args()
    global _Iterable
    _Iterable = _make_iterable()
    model_dir = os.path.abspath(a.model)
    paths = make_shards(os.path.join(a.work, "shards"), a.shards, a.per_shard)
    n = count_images(paths)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
    print(f"# {n} images in {len(paths)} shards; model {model_dir}; {a.threads} threads; CPU {name}")
    rows = []
    for prec in a.precisions.split(","):
        secs, ran = run_cliprt_api(model_dir, paths, os.path.join(a.work, f"api-{prec}"), a.threads, prec)
        rows.append((f"cliprt Python API (1 thread, {a.threads} compute threads)", prec, ran, n / secs))
        secs = run_cliprt_api_threads(model_dir, paths, os.path.join(a.work, f"apit-{prec}"), a.threads, prec)
        rows.append((f"cliprt Python API ({a.threads} threads, 1 compute thread each)", prec, ran, n / secs))
        if not a.skip_ray:
            for actors in sorted({1, a.threads}):
                secs = run_cliprt_ray(model_dir, paths, os.path.join(a.work, f"ray-{prec}-{actors}"), a.threads,
                                      prec, actors)
                rows.append((f"cliprt Ray Data ({actors} actors × {a.threads // actors} threads)", prec, ran,
                             n / secs))
        if prec not in ("f32", "bf16"):  # i16: PyTorch has no such mode; compared with its fastest below
            continue
        best = 0.0
        for w in [int(x) for x in a.torch_workers.split(",")]:
            secs = run_torch(model_dir, paths, os.path.join(a.work, f"torch-{prec}-{w}"), a.threads, prec, w)
            rows.append((f"PyTorch + PIL ({w} loader workers)", prec, prec, n / secs))
            best = max(best, n / secs)
        rows.append(("PyTorch best", prec, prec, best))
    print(f"| pipeline | asked | ran | images/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} |")
    best_torch = {r[1]: r[3] for r in rows if r[0] == "PyTorch best"}
    for r in rows:
        if r[0].startswith("cliprt"):
            same = f"{r[3] / best_torch[r[1]]:.2f}x PyTorch {r[1]}; " if r[1] in best_torch else ""
            print(f"{r[0]} {r[1]}: {same}{r[3] / max(best_torch.values(), default=float('nan')):.2f}x PyTorch's fastest")
    if a.tower:
        for prec in a.precisions.split(","):
            bench_ips, py_ips, per_round, scaling = tower(model_dir, a.threads, prec)
            rounds = ", ".join(f"{x:.3f}" for x in per_round)
            print(f"tower {prec} batch 32, best of {len(per_round)} alternated rounds: cliprt bench {bench_ips:.2f} "
                  f"images/s, Python API {py_ips:.2f} ({py_ips / bench_ips:.3f}x; round by round {rounds}); two "
                  f"Python threads on one model (1 compute thread each): {scaling:.2f}x one thread")


if __name__ == "__main__":
    sys.exit(main())
