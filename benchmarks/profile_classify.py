"""Where `ironsight classify` spends its time: py-spy over the driver and every Ray worker.

Runs the real CLI under ``py-spy record --subprocesses`` (the embedded Ray's raylet, its
Python workers, the decode tasks and the predictor actors are all children of the driver, so
one recording covers them), then folds the raw stacks into a text report:

  1. samples by activity x process role, where an activity is decided by the stack:
       start-up: imports      any frame under importlib (torch, torchvision, Ray Data load)
       start-up: model        building/loading the model (Predictor.__init__, ModelSource.load)
       read parquet           ironsight.cluster.reader.iter_shard and pyarrow below it, in decode tasks
       decode                 ironsight.cluster.decode (PIL open, draft, resize, crop) in decode tasks
       inference              the model's forward pass inside Predictor.__call__
       predictor glue         the rest of Predictor.__call__ (batch to tensor, softmax, top-k)
       driver: plan           plan_corpus, validate_model, output_rows_hash, LabelSink.open
       driver: assembly       _stream's per-shard assembly, _shard_table, sink commits
       Ray overhead           any other frame in ray/ that is not waiting
       waiting                the innermost frame waits (threading waits, Ray's worker loop
                              and blocking gets, selectors, sleep): not CPU
       no Python frame        a thread in native code only (py-spy sees no Python frame)
  2. for the busy activities, the heaviest innermost frames.

Samples are taken at ``--rate`` Hz per thread; samples / rate ~ thread-seconds. With 2 cores and
a dozen Ray processes py-spy can fall behind (it says so); the shares stay meaningful.

    python benchmarks/profile_classify.py --images 4000 \\
        --output benchmarks/profiles/classify-cpu-$(date -u +%F).txt
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

ACTIVITIES = (
    "start-up: imports", "start-up: model", "read parquet", "decode", "inference", "predictor glue",
    "driver: plan", "driver: assembly", "Ray overhead", "waiting", "no Python frame", "other",
)
BUSY = tuple(a for a in ACTIVITIES if a not in ("waiting", "no Python frame"))
# Innermost frames that block without using CPU (py-spy's own idle detection misses some): waits,
# and Ray's polling loops whose innermost Python line is a time.sleep or a blocking poll.
_WAITS = ("wait (", "Condition.wait", "Event.wait", "main_loop (ray/_private/worker.py",
          "get_output_blocking", "select (selectors", "sleep", "get_objects (ray/_private/worker.py",
          "_wait_for_tstate_lock", "Queue.get", "poll (", "accept (", "recv", "run_forever",
          "tick_thread_run", "listen_error_messages", "LogMonitor.run", "_check_parent_via_pipe",
          "Monitor._run", "_worker (concurrent/futures/thread.py", "Thread.run (threading.py")


def _has(frames: list[str], *needles: str) -> bool:
    return any(n in f for f in frames for n in needles)


def activity(frames: list[str]) -> str:
    """The activity of one sampled stack (outermost frame first), as listed in the docstring."""
    if not frames:
        return "no Python frame"
    if _has(frames, "<frozen importlib"):
        return "start-up: imports"
    leaf = frames[-1]
    if any(w in leaf for w in _WAITS):
        return "waiting"
    if _has(frames, "Predictor.__init__", "ModelSource.load", "ModelSource.validate"):
        return "start-up: model"
    if _has(frames, "cluster/decode.py", "PIL/"):
        return "decode"
    if _has(frames, "cluster/reader.py") and _has(frames, "read_and_decode"):
        return "read parquet"
    if _has(frames, "Predictor.__call__"):
        return "inference" if _has(frames, "torch/nn/modules") else "predictor glue"
    if _has(frames, "plan_corpus", "validate_model", "output_rows_hash", "LabelSink.open"):
        return "driver: plan"
    if _has(frames, "_shard_table", "LabelSink.commit", "flush_manifest") or (
            _has(frames, "_stream (cluster/pipeline.py") and not _has(frames, "ray/")):
        return "driver: assembly"
    if _has(frames, "ray/"):
        return "Ray overhead"
    return "other"


def _pid(process_frame: str) -> str:
    return process_frame.split(":")[0].split()[1]


def fold(raw_path: str) -> tuple[collections.Counter, dict[str, collections.Counter]]:
    """Count samples by (activity, role) and the heaviest leaves per activity from py-spy raw output.

    Roles: ``driver`` (the CLI process py-spy started), ``worker`` (a Ray Python worker running
    decode tasks or a predictor actor: Ray retitles them ``ray::...``, so they are told by a
    main thread in ``default_worker.py``; their other threads count too), ``Ray system``
    (raylet, GCS, dashboard, agents, monitors).
    """
    with open(raw_path) as f:
        samples = []
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                frames = stack.split(";")
                procs = [x for x in frames if x.startswith("process ")]
                samples.append((_pid(procs[-1]) if procs else "", procs,
                                [x for x in frames if not x.startswith("process ")], int(count)))
    driver = next((_pid(procs[0]) for _, procs, _, _ in samples if procs), "")
    workers = {pid for pid, _, code, _ in samples if _has(code, "ray/_private/workers/default_worker.py")}
    table: collections.Counter = collections.Counter()
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for pid, _, code, count in samples:
        act = activity(code)
        who = "driver" if pid == driver else "worker" if pid in workers else "Ray system"
        table[(act, who)] += count
        if code:
            leaves[act][" < ".join(code[-1:-3:-1])] += count
    return table, leaves


def per_process(raw_path: str, rate: int) -> list[str]:
    """One line per Python process with busy samples: its role, the thread-seconds it spent
    importing, and what it did after (decode, inference, ...): who pays the start-up."""
    procs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    order: list[str] = []
    driver = ""
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            chain = [x for x in frames if x.startswith("process ")]
            if not chain:
                continue
            pid = _pid(chain[-1])
            driver = driver or _pid(chain[0])
            if pid not in procs:
                order.append(pid)
            code = [x for x in frames if not x.startswith("process ")]
            procs[pid][activity(code)] += int(count)
            if _has(code, "ray/_private/workers/default_worker.py"):
                procs[pid]["_worker"] = 1
    lines = [f"{'process':<10} {'role':<11} {'imports s':>10} {'busy s':>8}  then"]
    for pid in order:
        c = procs[pid]
        busy = sum(v for a, v in c.items() if a in BUSY)
        if busy < rate:  # under a thread-second: not worth a line
            continue
        who = "driver" if pid == driver else "worker" if c["_worker"] else "Ray system"
        then = ", ".join(a for a in ("read parquet", "decode", "inference", "driver: plan", "driver: assembly")
                         if c[a]) or "-"
        lines.append(f"{pid:<10} {who:<11} {c['start-up: imports'] / rate:>10.1f} {busy / rate:>8.1f}  {then}")
    return lines


def render(table: collections.Counter, leaves: dict[str, collections.Counter], rate: int, header: str,
           top: int = 8) -> str:
    roles = ("driver", "worker", "Ray system")
    total = sum(table.values())
    busy = sum(v for (a, _), v in table.items() if a in BUSY)
    run_busy = sum(v for (a, _), v in table.items() if a in BUSY and not a.startswith("start-up"))
    lines = [header, "",
             f"samples: {total} at {rate} Hz ({total / rate:.0f} thread-seconds); busy (not waiting, with a "
             f"Python frame): {busy}; busy after start-up: {run_busy}", "",
             f"{'activity':<20}" + "".join(f"{r:>12}" for r in roles)
             + f"{'all':>10}{'% of busy':>11}{'% after start-up':>18}"]
    for act in ACTIVITIES:
        row = [table.get((act, r), 0) for r in roles]
        if not any(row):
            continue
        s = sum(row)
        pct = f"{100 * s / busy:10.1f}%" if act in BUSY else f"{'':>11}"
        pct2 = (f"{100 * s / run_busy:17.1f}%" if act in BUSY and not act.startswith("start-up")
                else f"{'':>18}")
        lines.append(f"{act:<20}" + "".join(f"{v:>12}" for v in row) + f"{s:>10}" + pct + pct2)
    for act in BUSY:
        if not leaves.get(act):
            continue
        lines += ["", f"heaviest innermost frames: {act} (samples, frame < its caller)"]
        lines += [f"  {v:>6}  {k[:150]}" for k, v in leaves[act].most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--model", default="demo_cnn")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rate", type=int, default=25, help="py-spy samples per second per thread (default: 25)")
    ap.add_argument("--output", default=None, help="write the report here too (default: print only)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-profile"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed for the profiled run")
    args = ap.parse_args(argv)

    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise SystemExit("py-spy not found: pip install py-spy (it is in the `test` extra)")
    from ironsight.cluster import synthetic

    corpus = os.path.join(args.workdir, f"corpus-{args.images}-{args.image_size}")
    if not os.path.isdir(corpus):
        synthetic.write_corpus(corpus, args.images, seed=99, rows_per_file=1000, row_group_size=250,
                               size=args.image_size)
    out = os.path.join(args.workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    raw = os.path.join(args.workdir, "pyspy-raw.txt")
    cli = [sys.executable, "-m", "ironsight.jobs.cli", "classify", corpus, out, "--model", args.model, "--random-weights",
           "--batch-size", str(args.batch_size), "--no-progress"]
    cmd = [pyspy, "record", "--subprocesses", "--rate", str(args.rate), "--format", "raw", "-o", raw, "--", *cli]
    env = {**os.environ, "IRONSIGHT_HOME": os.path.join(args.workdir, "home"), "PYTHONPATH": ROOT}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise SystemExit(f"py-spy/classify did not finish in {args.timeout:.0f}s:\n{tail}") from exc
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(raw):
        raise SystemExit(f"py-spy/classify failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    said = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith(("labeled", "  shards"))]
    behind = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("py-spy>") and "behind" in ln]
    table, leaves = fold(raw)
    load = os.getloadavg()
    header = "\n".join([
        f"Profile of `ironsight classify`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"made by: python benchmarks/profile_classify.py --images {args.images} --image-size {args.image_size} "
        f"--model {args.model} --batch-size {args.batch_size} --rate {args.rate}",
        f"which runs: py-spy record --subprocesses --rate {args.rate} --format raw -- "
        f"python -m ironsight.jobs.cli classify CORPUS OUT --model {args.model} --random-weights "
        f"--batch-size {args.batch_size} --no-progress",
        f"corpus: {args.images} synthetic {args.image_size}px JPEGs (q90) in Parquet, 1000 rows a file, "
        f"row groups of 250 (ironsight.cluster.synthetic, seed 99)",
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, no GPU; "
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        f"wall time under py-spy: {wall:.1f}s; the CLI said: " + " | ".join(said),
        f"py-spy fell behind {len(behind)} time(s) (2 cores shared with py-spy and every Ray process)",
    ])
    text = render(table, leaves, args.rate, header)
    text += "\nstart-up by process (thread-seconds = samples / rate):\n" + "\n".join(per_process(raw, args.rate)) + "\n"
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
    busy = sum(v for (a, _), v in table.items() if a in BUSY)
    shares = {a: sum(v for (b, _), v in table.items() if b == a) / busy for a in BUSY} if busy else {}
    return {"wall_s": wall, "samples": sum(table.values()), "busy_share": shares, "report": text}


if __name__ == "__main__":
    main()
