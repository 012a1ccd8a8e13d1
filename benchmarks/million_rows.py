"""A million rows: `ironsight classify` of 1,000,000 tiny images, driver memory, a kill, a resume.

Three runs of the real command (``ironsight classify CORPUS OUT --model-card noop.yaml
--no-progress``), each a fresh process with its own embedded Ray, on one corpus of 8 px PNGs
(a few hundred distinct images, their bytes repeated: it writes in seconds) and a no-op model
(TorchScript, fixed logits, top-5; ``benchmarks/noop.py``):

| run      | what                                                                  | measured |
|----------|-----------------------------------------------------------------------|----------|
| full     | the whole corpus into a fresh OUTPUT                                  | time per million rows; driver RSS |
| killed   | the same into another OUTPUT; ``--signal`` once ``--kill-at`` of the shards have a part file | rows committed before the kill (part files' footers; the manifest's count, which lags, beside it) |
| resumed  | the same command again on the killed OUTPUT                           | rows it labelled (``_SUCCESS``), re-processed extra |

The driver's resident memory (the ``ironsight classify`` process: Ray's driver, the sink and the
assembly live in it) is sampled every ``--interval`` seconds in every run and plotted to
``RESULTS/million-rows-<UTC>.png``; the numbers go to ``.json`` and ``.md`` beside it. The
re-processed extra is ``(rows labelled by the resume - rows left uncommitted at the kill) /
rows left``; target <= 10%. After the resume, OUTPUT is read back: every id once, no more.
``--signal term`` (default) is ``kill PID``, as ``docker stop`` or Kubernetes send it;
``--signal kill`` is SIGKILL of the whole process group (driver, raylet, workers).

    python benchmarks/million_rows.py --rows 1000000
    python benchmarks/million_rows.py --rows 50000      # a check that it all works
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import noop  # noqa: E402
from resume_cost import _env, kill_and_resume  # noqa: E402


def command(corpus: str, out: str, card: str, args: argparse.Namespace) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ironsight")
    head = [exe] if os.path.exists(exe) else [sys.executable, "-m", "ironsight.jobs.cli"]
    cmd = head + ["classify", corpus, out, "--model-card", card, "--no-progress",
                  "--max-rows-per-shard", str(args.max_rows_per_shard)]
    return cmd + (["--batch-size", str(args.batch_size)] if args.batch_size else [])


def rss_summary(samples: list[tuple[float, float]], since: float | None = None) -> dict:
    """Peak, last, and growth while labelling: the mean of the last fifth of the samples taken
    from ``since`` on (the first commit: start-up, imports and the model, is over) minus the
    mean of their first fifth. Flat memory is a growth near 0 however long the run."""
    mb = [m for _, m in samples]
    if not mb:
        return {"samples": 0}
    steady = [m for t, m in samples if since is None or t >= since] or mb[-1:]
    fifth = max(1, len(steady) // 5)
    early, late = steady[:fifth], steady[-fifth:]
    return {"samples": len(mb), "peak_mb": max(mb), "last_mb": mb[-1], "steady_samples": len(steady),
            "growth_mb": round(sum(late) / len(late) - sum(early) / len(early), 1)}


def read_back(out: str) -> dict:
    """Rows and distinct ids in OUTPUT's part files."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    ids = pads.dataset(out, format="parquet", exclude_invalid_files=True,
                       ignore_prefixes=["_", "."]).to_table(columns=["id"]).column("id")
    return {"rows": len(ids), "distinct_ids": len(pc.unique(ids))}


def plot(runs: dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    offset = 0.0
    for name, r in runs.items():
        if r["rss"]:
            ax.plot([offset + t for t, _ in r["rss"]], [m for _, m in r["rss"]], marker=".", label=name)
        if r.get("killed_at_s") is not None:
            ax.axvline(offset + r["killed_at_s"], color="red", linestyle="--", linewidth=1)
        offset += r["wall_s"]
    ax.set_xlabel("seconds (runs one after the other; dashed: the kill)")
    ax.set_ylabel("driver RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(res: dict) -> str:
    a = res["args"]
    label = "" if a["rows"] >= 1_000_000 else f" (a check at {a['rows']:,} rows, not the million)"
    lines = [f"# A million rows{label} ({res['started']})", "",
             f"`ironsight classify` of {a['rows']:,} {noop.SIZE} px PNGs, no-op model (fixed logits, top-5), "
             f"{res['shards']} shards of <= {a['max_rows_per_shard']} rows, batch {a['batch_size'] or 'default'}; "
             f"driver RSS sampled every {a['interval']:g} s (plot: `{os.path.basename(res['plot'])}`).", "",
             "| run | seconds | first commit s | rows | driver RSS peak MB | last MB | "
             "growth MB from the first commit | samples |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["runs"].items():
        m = r["rss_summary"]
        first = "-" if r["first_commit_s"] is None else f"{r['first_commit_s']:.1f}"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {first} | {r['rows']:,} | {m.get('peak_mb', 0):.0f} | "
                     f"{m.get('last_mb', 0):.0f} | {m.get('growth_mb', 0):+.0f} | "
                     f"{m.get('steady_samples', 0)} of {m['samples']} |")
    k = res["kill"]
    lines += ["",
              f"- Time per million rows (full run, start-up included): **{res['seconds_per_million']:.0f} s** "
              f"({res['rows_per_s']:,.0f} rows/s).",
              f"- Kill: SIG{a['signal'].upper()} at {k['killed_at_s']:.1f} s, once {k['kill_after_parts']} of "
              f"{res['shards']} shards had a part file; committed before the kill: {k['committed_rows']:,} rows "
              f"in {k['parts']} part files (the manifest, flushed every few seconds, said {k['manifest_rows']:,}); "
              f"exit {k['exit']}.",
              f"- Resume: labelled {k['resumed_rows']:,} rows ({k['resumed_shards_skipped']} shards skipped) for a "
              f"remainder of {k['remainder_rows']:,}: re-processed extra **{100 * k['reprocessed_extra']:.1f}%** "
              "(target <= 10%).",
              f"- Read back after the resume: {res['read_back']['rows']:,} rows, "
              f"{res['read_back']['distinct_ids']:,} distinct ids (every row exactly once: "
              f"{'yes' if res['exactly_once'] else 'NO'}).",
              "", "Command: `python benchmarks/million_rows.py " + " ".join(res["argv"]) + "`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="corpus size (default: 1000000)")
    ap.add_argument("--max-rows-per-shard", type=int, default=4096, help="as `classify` (default: 4096)")
    ap.add_argument("--batch-size", type=int, default=None, help="as `classify` (default: its default)")
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of shards committed at the kill")
    ap.add_argument("--signal", choices=("term", "kill"), default="term",
                    help="term: SIGTERM to `ironsight classify`; kill: SIGKILL to its process group")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default: 5)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds allowed per run")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-million"))
    ap.add_argument("--results", default=noop.RESULTS, help="where million-rows-<UTC>.json/.md/.png go")
    args = ap.parse_args(argv)
    if not 0 < args.kill_at < 1:
        ap.error(f"--kill-at must be between 0 and 1, got {args.kill_at}")

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stamp = noop.utc_stamp()
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, f"corpus-{args.rows}")
    gen_s = noop.write_tiny_corpus(corpus, args.rows, row_group_size=args.max_rows_per_shard)
    card = noop.write_noop_card(os.path.join(args.workdir, "model"))
    k = kill_and_resume(lambda out: command(corpus, out, card, args), _env(args.workdir), args.workdir,
                        args.kill_at, args.timeout, sig=args.signal, rss_interval=args.interval)
    runs, full, resumed, shards = k["runs"], k["full"], k["resumed"], k["shards"]
    killed, committed, remainder = runs["killed"], k["committed_rows"], k["remainder_rows"]
    back = read_back(k["out"])
    for r in runs.values():
        r["rss_summary"] = rss_summary(r["rss"], r["first_commit_s"])

    os.makedirs(args.results, exist_ok=True)
    png = os.path.join(args.results, f"million-rows-{stamp}.png")
    res = {
        "started": started, "argv": list(argv if argv is not None else sys.argv[1:]), "args": vars(args),
        "corpus_generate_s": gen_s, "shards": shards, "plot": png, "runs": runs,
        "seconds_per_million": runs["full"]["wall_s"] * 1_000_000 / full["rows"],
        "rows_per_s": full["rows"] / runs["full"]["wall_s"],
        "kill": {"kill_after_parts": k["kill_after_parts"], "killed_at_s": killed["killed_at_s"],
                 "exit": killed["exit"], "parts": k["parts_at_kill"], "committed_rows": committed,
                 "manifest_rows": k["manifest_rows"],
                 "remainder_rows": remainder, "resumed_rows": resumed["rows"],
                 "resumed_shards_skipped": resumed["shards_skipped"],
                 "reprocessed_extra": (resumed["rows"] - remainder) / remainder if remainder else 0.0},
        "read_back": back,
        "exactly_once": back["rows"] == back["distinct_ids"] == full["rows_total"],
    }
    plot(runs, png, f"ironsight classify, {args.rows:,} tiny images: driver RSS every {args.interval:g} s")
    text = render(res)
    print("\n" + text)
    stem = noop.write_results("million-rows", res, text, folder=args.results, stamp=stamp)
    print(f"written: {stem}.json, {stem}.md, {png}")
    return res


if __name__ == "__main__":
    main()
