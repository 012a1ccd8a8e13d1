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
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
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


def part_files(out: str) -> int:
    """Part files committed in a local OUTPUT so far (0 before the folder exists)."""
    if not os.path.isdir(out):
        return 0
    return sum(n.startswith("part-") and n.endswith(".parquet") for n in os.listdir(out))


def run_watched(cmd: list[str], env: dict[str, str], log_path: str, timeout: float, *,
                out: str | None = None, kill_after_parts: int | None = None, sig: str = "kill",
                rss_interval: float | None = None) -> dict:
    """Run ``cmd`` in a session of its own (its output in ``log_path``) until it exits.

    | keyword            | what it adds                                                      |
    |--------------------|-------------------------------------------------------------------|
    | ``out``            | ``first_commit_s``: when OUT got its first new part file (start-up is over) |
    | ``kill_after_parts`` | ``killed_at_s``: the signal once OUT has that many part files   |
    | ``sig``            | ``kill``: SIGKILL to the whole process group (driver, raylet, workers); ``term``: SIGTERM to the command, as ``docker stop`` or Kubernetes send it, then SIGKILL to what it left once it exits |
    | ``rss_interval``   | ``rss``: the command's resident memory every so many seconds (``noop.RssSampler``) |

    Returns ``wall_s`` (until the command exited), ``exit``, ``killed_at_s``,
    ``first_commit_s`` (None when not reached) and ``rss`` (``(seconds, MB)`` samples).

    Raises:
        RuntimeError: the command ran past ``timeout`` seconds, or exited non-zero without
            having been signalled (with the tail of its log).
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        start = time.perf_counter()
        killed_at = first_commit = None
        before = part_files(out) if out else 0
        if rss_interval:
            import noop

            sampler = noop.RssSampler(proc.pid, rss_interval)
        else:
            sampler = contextlib.nullcontext()
        with sampler as rss:
            try:
                while proc.poll() is None:
                    if time.perf_counter() - start > timeout:
                        raise RuntimeError(f"{' '.join(cmd[:5])} ran past {timeout:.0f}s. Log: {log_path}")
                    if first_commit is None and out and part_files(out) > before:
                        first_commit = time.perf_counter() - start
                    if killed_at is None and kill_after_parts is not None and part_files(out) >= kill_after_parts:
                        killed_at = time.perf_counter() - start
                        if sig == "kill":
                            os.killpg(proc.pid, signal.SIGKILL)
                        else:
                            proc.send_signal(signal.SIGTERM)
                    time.sleep(0.05)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if killed_at is not None and sig == "term":
                    # the driver shuts its Ray down on SIGTERM; anything it left goes now
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
    wall = time.perf_counter() - start
    if killed_at is None and proc.returncode != 0:
        with open(log_path) as f:
            raise RuntimeError(f"{' '.join(cmd[:5])} exited {proc.returncode}:\n{f.read()[-3000:]}")
    return {"wall_s": wall, "exit": proc.returncode, "killed_at_s": killed_at, "first_commit_s": first_commit,
            "rss": rss.samples if rss is not None else []}


def kill_and_resume(command: Callable[[str], list[str]], env: dict[str, str], workdir: str, kill_at: float,
                    timeout: float, *, sig: str = "kill", rss_interval: float | None = None) -> dict:
    """The three runs of a kill benchmark, each a fresh process of ``command(OUTPUT)``:

    | run       | what                                                                  |
    |-----------|-----------------------------------------------------------------------|
    | full      | into a fresh ``WORKDIR/out-full``                                     |
    | killed    | into a fresh ``WORKDIR/out-killed``, signalled (``sig``, see :func:`run_watched`) once ``kill_at`` of the shards have a part file; run again, at most ``KILL_ATTEMPTS`` times, while the kill lands after the last commit |
    | resumed   | again on the killed OUTPUT                                            |

    Returns ``runs`` (each run's :func:`run_watched` result, with ``rows``: labelled; for the
    killed run, committed before the kill), the full and the resumed run's ``_SUCCESS``
    summaries (``full``, ``resumed``), ``shards``, ``kill_after_parts``, ``parts_at_kill``,
    ``committed_rows`` (from the part files' footers), ``manifest_rows`` (what the manifest said
    then: it lags), ``remainder_rows`` (the rows that had no
    committed part file at the kill) and ``out`` (the killed and resumed OUTPUT).
    """
    outs = {k: os.path.join(workdir, f"out-{k}") for k in ("full", "killed")}
    for path in outs.values():
        shutil.rmtree(path, ignore_errors=True)
    runs = {"full": run_watched(command(outs["full"]), env, outs["full"] + ".log", timeout, out=outs["full"],
                                rss_interval=rss_interval)}
    full = _success(outs["full"])
    runs["full"]["rows"] = full["rows"]
    shards = full["shards_total"]
    kill_after = max(1, math.ceil(shards * kill_at))
    if kill_after >= shards:
        raise SystemExit(f"only {shards} shards: too few to kill mid-run; lower --max-rows-per-shard")
    # On a busy machine the last shards can all land between two polls, so the kill may come
    # after the run's work is done; such a run measures nothing: run it again (a fresh OUTPUT).
    for attempt in range(1, KILL_ATTEMPTS + 1):
        shutil.rmtree(outs["killed"], ignore_errors=True)
        killed = run_watched(command(outs["killed"]), env, outs["killed"] + ".log", timeout, out=outs["killed"],
                             kill_after_parts=kill_after, sig=sig, rss_interval=rss_interval)
        parts_at_kill, committed_rows = _committed_rows(outs["killed"])
        if killed["killed_at_s"] is not None and parts_at_kill < shards:
            break
        print(f"attempt {attempt}: all {shards} shards were committed before the kill landed", file=sys.stderr)
    else:
        raise RuntimeError(f"the kill landed after the last commit {KILL_ATTEMPTS} times; use a larger corpus "
                           "or a smaller --batch-size")
    runs["killed"] = {**killed, "rows": committed_rows}
    manifest_rows = 0  # what the manifest, flushed every few seconds, said at the kill
    with contextlib.suppress(OSError, ValueError), open(os.path.join(outs["killed"], "_manifest.json")) as f:
        manifest_rows = json.load(f).get("committed_rows", 0)
    runs["resumed"] = run_watched(command(outs["killed"]), env, outs["killed"] + ".resume.log", timeout,
                                  out=outs["killed"], rss_interval=rss_interval)
    resumed = _success(outs["killed"])
    runs["resumed"]["rows"] = resumed["rows"]
    return {"runs": runs, "full": full, "resumed": resumed, "shards": shards, "kill_after_parts": kill_after,
            "parts_at_kill": parts_at_kill, "committed_rows": committed_rows, "manifest_rows": manifest_rows,
            "remainder_rows": full["rows_total"] - committed_rows, "out": outs["killed"]}


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
    k = kill_and_resume(lambda out: _cli_args(corpus, out, args), _env(args.workdir), args.workdir, args.kill_at,
                        args.timeout, sig="kill")
    full, resumed, shards = k["full"], k["resumed"], k["shards"]
    full_s, killed_s, resumed_s = (k["runs"][name]["wall_s"] for name in ("full", "killed", "resumed"))
    parts_at_kill, committed_rows, remainder = k["parts_at_kill"], k["committed_rows"], k["remainder_rows"]
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
