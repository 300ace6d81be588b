"""cliprt on Ray Data: a local cluster's run equals the one-process run; a killed run, rerun, redoes only the
shards without a finished output; bad shards are listed and passed over."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import cliprt
import cliprt.ray
from conftest import TINY, cli, make_shards, write_shard

ray = pytest.importorskip("ray")


def outputs_of(folder):
    """{file name: bytes} of a shard output folder (temporary files aside)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if n.endswith((".npy", ".json"))}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_run_equals_the_one_process_run(tmp_path, local_ray):
    shards = make_shards(str(tmp_path))
    # A member that is not an image, a truncated shard, a missing shard.
    write_shard(str(tmp_path / "00004.tar"), [("000100", "square.png")], extra=[("000101.jpg", b"no jpeg")])
    full = open(shards[1], "rb").read()
    (tmp_path / "00005.tar").write_bytes(full[: len(full) // 3])
    pattern = str(tmp_path / "{00000..00006}.tar")

    one = tmp_path / "one"
    r = cli("index", "--model", TINY, "--shards", pattern, "--out", str(one))
    assert r.returncode != 0 and "2 failed" in r.stdout, r.stdout + r.stderr

    out = tmp_path / "ray"
    report = cliprt.ray.embed_shards(pattern, TINY, str(out), concurrency=2, threads=1)
    assert sorted(os.path.basename(s) for s, _ in report["failed"]) == ["00005.tar", "00006.tar"]
    assert any("truncated tar" in why for _, why in report["failed"])
    assert len(report["embedded"]) == 5 and report["rows"] == 7 + 40 + 5 + 12 + 1
    skipped = [r["skipped"] for r in report["embedded"] if r["shard"].endswith("00004.tar")][0]
    assert [k for k, _ in skipped] == ["000101"]
    # Bitwise the same files: embeddings and metadata.
    assert outputs_of(out) == outputs_of(one)
    assert len(outputs_of(out)) == 10


def test_killed_ray_run_resumes_only_unfinished_shards(tmp_path):
    from conftest import write_shard as ws

    total = 16
    paths = []
    for s in range(total):
        path = str(tmp_path / f"{s:05d}.tar")
        ws(path, [(f"{s:03d}{i:03d}", "big_landscape.png") for i in range(24)])
        paths.append(path)
    pattern = str(tmp_path / f"{{00000..{total - 1:05d}}}.tar")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cliprt.ray", "--model", TINY, "--shards", pattern, "--out", str(out),
           "--concurrency", "1", "--threads", "1"]
    env = dict(os.environ, RAY_ADDRESS="local")
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env=env)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            done = [n for n in os.listdir(out) if n.endswith(".json")] if out.exists() else []
            if len(done) >= 3 or job.poll() is not None:
                break
            time.sleep(0.005)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    time.sleep(1)
    finished = sorted(n for n in os.listdir(out) if n.endswith(".json"))
    assert 0 < len(finished) < total, f"the kill came at {len(finished)} of {total} shards"
    # No output was left half-written: every finished shard reads back, no .npy stands without its .json
    # unless it is complete too (a kill between the two renames).
    model = cliprt.Model(TINY)
    for p in paths:
        assert cliprt.shard_output_done(model, p, str(out)) == (os.path.basename(p)[:-4] + ".json" in finished)

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"embedded {total - len(finished)} shards" in rerun.stdout, rerun.stdout
    assert f"{len(finished)} already done" in rerun.stdout, rerun.stdout

    one = tmp_path / "one"
    r = cli("index", "--model", TINY, "--shards", pattern, "--out", str(one))
    assert r.returncode == 0, r.stderr
    assert outputs_of(out) == outputs_of(one)


def test_bad_shard_patterns_and_names(tmp_path, local_ray):
    with pytest.raises(cliprt.InputError):
        cliprt.ray.embed_shards(str(tmp_path / "{1..x}.tar"), TINY, str(tmp_path / "o"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(cliprt.InputError, match="same output"):
        cliprt.ray.embed_shards([str(tmp_path / "a" / "1.tar"), str(tmp_path / "b" / "1.tar")], TINY,
                                str(tmp_path / "o"))
    shutil.rmtree(tmp_path / "a")
