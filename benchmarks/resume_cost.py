"""What a crash costs: SIGKILL `ironsight classify` at ~50% of shards committed, then resume.

Three runs of the real CLI (`python -m ironsight.jobs.cli classify ... --no-progress`), each a fresh
process with its own embedded Ray, on one synthetic corpus and one model:

  full      the whole corpus into a fresh OUTPUT (the baseline)
  killed    the same into another fresh OUTPUT; the whole process group (driver, raylet,
            workers) gets SIGKILL once ``--kill-at`` of the shards have a committed part file
  resumed   the same command again on the killed OUTPUT

The remainder is the rows that had no committed part file when the kill landed (counted
from the part files' footers after the kill). The resumed run says how many rows it
labeled and how many shards it skipped (its ``_SUCCESS`` summary: ``rows``,
``shards_skipped``). Issue 7's target: the resumed run re-processes at most 10% more than
the remainder, i.e. ``(resumed rows - remainder) / remainder <= 0.10``. Also reported: the
time of killed + resumed against the full run (work in flight at the kill is lost, and each
run pays Ray's and the actors' start-up).

    python benchmarks/resume_cost.py --images 4000 --max-rows-per-shard 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

KILL_ATTEMPTS = 3


def _cli_args(corpus: str, out: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "ironsight.jobs.cli", "classify", corpus, out, "--model", args.model,
            "--random-weights", "--max-rows-per-shard", str(args.max_rows_per_shard),
            "--batch-size", str(args.batch_size), "--no-progress"]


def _env(workdir: str) -> dict[str, str]:
    # A private run history, so benchmark runs do not land in the user's history.db.
    return {**os.environ, "IRONSIGHT_HOME": os.path.join(workdir, "home"), "PYTHONPATH": ROOT}


def _success(out: str) -> dict:
    with open(os.path.join(out, "_SUCCESS")) as f:
        return json.load(f)["summary"]


def _committed_rows(out: str) -> tuple[int, int]:
    """(part files, rows in them) of a local OUTPUT, from the part files' footers."""
    import pyarrow.parquet as pq

    parts = [n for n in os.listdir(out) if n.startswith("part-") and n.endswith(".parquet")]
    return len(parts), sum(pq.read_metadata(os.path.join(out, n)).num_rows for n in parts)


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def _run_and_kill(cmd: list[str], env: dict[str, str], out: str, kill_after_parts: int,
                  timeout: float) -> float:
    """Start ``cmd`` in its own session; SIGKILL its process group at ``kill_after_parts`` parts.

    Returns the seconds from start to the kill.
    """
    log_path = out + ".log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the run ended (exit {proc.returncode}) before {kill_after_parts} "
                                       f"parts were committed; use a larger --images. Log: {log_path}")
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"no {kill_after_parts} parts after {timeout:.0f}s. Log: {log_path}")
                if os.path.isdir(out) and sum(
                        n.startswith("part-") and n.endswith(".parquet") for n in os.listdir(out)) >= kill_after_parts:
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000, help="corpus size (default: 4000)")
    ap.add_argument("--max-rows-per-shard", type=int, default=100,
                    help="shard size: the unit of commit, hence of work lost to a crash (default: 100)")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="kill once this fraction of the shards is committed (default: 0.5)")
    ap.add_argument("--model", default="demo_cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-resume-bench"))
    args = ap.parse_args(argv)
    if not 0 < args.kill_at < 1:
        ap.error(f"--kill-at must be between 0 and 1, got {args.kill_at}")

    from ironsight.cluster import synthetic

    corpus = os.path.join(args.workdir, f"corpus-{args.images}")
    if not os.path.isdir(corpus):
        synthetic.write_corpus(corpus, args.images, seed=7, rows_per_file=1000,
                               row_group_size=min(100, args.max_rows_per_shard))
    env = _env(args.workdir)
    outs = {k: os.path.join(args.workdir, f"out-{k}") for k in ("full", "killed")}
    for path in outs.values():
        shutil.rmtree(path, ignore_errors=True)

    full_s = _run(_cli_args(corpus, outs["full"], args), env, args.timeout)
    full = _success(outs["full"])
    shards = full["shards_total"]
    kill_after = max(1, math.ceil(shards * args.kill_at))
    if kill_after >= shards:
        raise SystemExit(f"only {shards} shards: too few to kill mid-run; lower --max-rows-per-shard")

    # On a busy machine the last shards can all land between two polls, so the kill may come
    # after the run's work is done; such a run measures nothing: run it again (a fresh OUTPUT).
    for attempt in range(1, KILL_ATTEMPTS + 1):
        shutil.rmtree(outs["killed"], ignore_errors=True)
        killed_s = _run_and_kill(_cli_args(corpus, outs["killed"], args), env,
                                 outs["killed"], kill_after, args.timeout)
        parts_at_kill, committed_rows = _committed_rows(outs["killed"])
        if parts_at_kill < shards:
            break
        print(f"attempt {attempt}: all {shards} shards were committed before the kill landed", file=sys.stderr)
    else:
        raise RuntimeError(f"the kill landed after the last commit {KILL_ATTEMPTS} times; use a larger "
                           "--images or a smaller --batch-size")
    remainder = full["rows_total"] - committed_rows
    resumed_s = _run(_cli_args(corpus, outs["killed"], args), env, args.timeout)
    resumed = _success(outs["killed"])
    extra = (resumed["rows"] - remainder) / remainder if remainder else 0.0

    result = {
        "images": args.images, "shards": shards, "model": args.model,
        "full_s": full_s, "killed_s": killed_s, "resumed_s": resumed_s,
        "parts_at_kill": parts_at_kill, "committed_rows_at_kill": committed_rows,
        "remainder_rows": remainder, "resumed_rows": resumed["rows"],
        "resumed_shards_skipped": resumed["shards_skipped"],
        "resumed_shards_processed": resumed["shards_processed"],
        "reprocessed_extra": extra,
        "time_ratio": (killed_s + resumed_s) / full_s,
    }
    print(f"\nresume after SIGKILL: {args.images} images in {shards} shards of <= {args.max_rows_per_shard} "
          f"rows, model {args.model}, killed at {parts_at_kill}/{shards} shards committed")
    print(f"{'run':<16} {'seconds':>9} {'rows labeled':>13}")
    print(f"{'full':<16} {full_s:>9.2f} {full['rows']:>13}")
    print(f"{'killed':<16} {killed_s:>9.2f} {committed_rows:>13}  (committed before the kill)")
    print(f"{'resumed':<16} {resumed_s:>9.2f} {resumed['rows']:>13}  "
          f"({resumed['shards_skipped']} shards skipped, {resumed['shards_processed']} processed)")
    print(f"remainder at the kill: {remainder} rows; the resumed run labeled {resumed['rows']}: "
          f"re-processed extra = {100 * extra:.1f}% (target <= 10%)")
    print(f"killed + resumed = {killed_s + resumed_s:.2f}s = {result['time_ratio']:.2f}x the full run "
          f"(each run pays Ray and actor start-up)")
    return result


if __name__ == "__main__":
    main()
