"""Planning a large corpus: time and memory of `plan_corpus` over 1,000 files / 10 M rows.

Millions of images do not fit a CPU test run, but planning touches only the Parquet footers,
so it can be measured at full scale. The corpus is made tiny on purpose: every row is a
string id (``img-0000000042``) and the same small JPEG (a 32 px image, ~1 KB), which Parquet
dictionary-encodes to a few bytes a row, so 10 M rows take tens of MB of disk. The files are
built by repetition (one Arrow table, a new id column per file), not row by row, and cached
under ``--workdir`` so reruns skip generation.

Measured in a fresh subprocess per store (so nothing is warm in the interpreter):

  plan_s         ``ironsight.cluster.corpus.plan_corpus(INPUT)``: list the files, read every footer,
                 detect columns, cut shards (the OS page cache holds the local files)
  fingerprint_s  ``CorpusPlan.fingerprint()``: what a run hashes to match a resume
  peak_mb        peak resident memory while planning minus the resident memory just before
                 (after imports; the peak is reset through ``/proc/self/clear_refs``, so
                 Linux only); ``traced_mb``: peak Python allocations (tracemalloc)

With ``--s3`` the same files are uploaded to a moto S3 server on 127.0.0.1 (started here in a
process of its own, ``local_s3.moto_server``) and planned from ``s3://``: footer reads then go
through HTTP.

    python benchmarks/plan_scale.py                          # 1,000 files x 10,000 rows
    python benchmarks/plan_scale.py --files 100 --rows-per-file 1000 --s3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import local_s3  # noqa: E402

# Runs in a fresh interpreter: imports first, then the baseline RSS, then the measured part.
PLAN_SNIPPET = """
import json, sys, time, tracemalloc
sys.path.insert(0, {root!r})
from ironsight.cluster.corpus import plan_corpus

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

base = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (peak RSS) to the current RSS
    f.write("5")
tracemalloc.start()
t = time.perf_counter()
plan = plan_corpus({uri!r}, max_rows_per_shard={max_rows})
plan_s = time.perf_counter() - t
t = time.perf_counter()
plan.fingerprint()
fingerprint_s = time.perf_counter() - t
traced = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
print(json.dumps({{"plan_s": plan_s, "fingerprint_s": fingerprint_s, "files": len(plan.files),
                  "rows": plan.num_rows, "shards": len(plan.shards), "layout": plan.layout.value,
                  "base_rss_mb": base, "peak_mb": status_mb("VmHWM") - base, "traced_mb": traced}}))
"""


def tiny_jpeg(size: int = 32) -> bytes:
    """One small synthetic image, JPEG q90: a real decodable image, reused by every row."""
    from ironsight.cluster import synthetic

    img, _ = synthetic.render_image(seed=0, index=0, size=size)
    return synthetic.encode(img, "jpeg", 90)


def generate(path: str, files: int, rows_per_file: int, row_group_size: int) -> float:
    """Write ``files`` Parquet files of ``rows_per_file`` rows under ``path``; returns seconds.

    Skipped when ``path/_COMPLETE`` says the same shape was written before.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    marker = os.path.join(path, "..", os.path.basename(path) + ".complete")
    shape = {"files": files, "rows_per_file": rows_per_file, "row_group_size": row_group_size}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == shape:
                return 0.0
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    start = time.perf_counter()
    image = pa.array([tiny_jpeg()], pa.binary())
    images = pa.chunked_array([image.take(pa.array(np.zeros(rows_per_file, np.int64)))])
    labels = pa.array(np.arange(rows_per_file, dtype=np.int64) % 10)
    for k in range(files):
        first = k * rows_per_file
        ids = pc.binary_join_element_wise(
            "img-", pc.utf8_lpad(pc.cast(pa.array(np.arange(first, first + rows_per_file)), pa.string()),
                                 10, "0"), "")  # img-0000000042
        table = pa.table({"id": ids, "image": images, "label": labels})
        pq.write_table(table, os.path.join(path, f"part-{k:05d}.parquet"), row_group_size=row_group_size)
    with open(marker, "w") as f:
        json.dump(shape, f)
    return time.perf_counter() - start


def disk_mb(path: str) -> float:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file()) / 2**20


def measure(uri: str, max_rows: int) -> dict:
    """Plan ``uri`` in a fresh interpreter (this process's environment: for s3://, the endpoint)."""
    code = PLAN_SNIPPET.format(root=ROOT, uri=uri, max_rows=max_rows)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"planning {uri} failed: {last}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def upload(local: str, endpoint: str, bucket: str) -> float:
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    names = sorted(n for n in os.listdir(local) if n.endswith(".parquet"))
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.upload_file(os.path.join(local, n), bucket, f"corpus/{n}"), names))
    return time.perf_counter() - start


def measure_s3(local: str, max_rows: int) -> tuple[dict, float]:
    """Start moto on loopback, upload the corpus, plan it from s3:// in a subprocess."""
    with local_s3.moto_server() as endpoint, \
            local_s3.patched_environ(local_s3.moto_env(endpoint), unset=local_s3.AWS_OVERRIDES):
        upload_s = upload(local, endpoint, "plan-bench")
        return measure("s3://plan-bench/corpus", max_rows), upload_s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000, help="Parquet files (default: 1000)")
    ap.add_argument("--rows-per-file", type=int, default=10_000, help="rows per file (default: 10000)")
    ap.add_argument("--row-group-size", type=int, default=1000,
                    help="rows per row group (default: 1000, so footers list 10 row groups a file)")
    ap.add_argument("--max-rows-per-shard", type=int, default=4096, help="as `classify` (default: 4096)")
    ap.add_argument("--s3", action="store_true", help="also plan the corpus from a local moto S3 server")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-plan-bench"))
    args = ap.parse_args(argv)

    corpus = os.path.join(args.workdir, f"corpus-{args.files}x{args.rows_per_file}")
    os.makedirs(args.workdir, exist_ok=True)
    gen_s = generate(corpus, args.files, args.rows_per_file, args.row_group_size)
    size = disk_mb(corpus)
    runs = {"local": measure(corpus, args.max_rows_per_shard)}
    upload_s = None
    if args.s3:
        runs["s3"], upload_s = measure_s3(corpus, args.max_rows_per_shard)

    rows = args.files * args.rows_per_file
    print(f"\nplanning: {args.files} files x {args.rows_per_file} rows = {rows:,} rows, "
          f"row groups of {args.row_group_size}, shards <= {args.max_rows_per_shard} rows; "
          f"{size:.0f} MB on disk" + (f" (generated in {gen_s:.1f}s)" if gen_s else " (cached)"))
    print(f"{'store':<6} {'plan s':>8} {'fingerprint s':>14} {'shards':>8} {'peak MB':>8} {'traced MB':>10}")
    for name, r in runs.items():
        assert r["rows"] == rows and r["files"] == args.files, r
        print(f"{name:<6} {r['plan_s']:>8.2f} {r['fingerprint_s']:>14.2f} {r['shards']:>8} "
              f"{r['peak_mb']:>8.1f} {r['traced_mb']:>10.1f}")
    if upload_s is not None:
        print(f"(uploading to moto took {upload_s:.1f}s; not part of planning)")
    return {"files": args.files, "rows": rows, "disk_mb": size, "generate_s": gen_s, "runs": runs}


if __name__ == "__main__":
    main()
