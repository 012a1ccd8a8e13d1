"""The driver's ceiling: rows/s one driver can assemble and commit, locally and to S3.

Every result row passes through the driver (``ironsight.cluster.assembly.assemble_shards``:
deduplicate by ``(shard, row)``, assemble each shard, ``LabelSink.commit`` a Parquet part file
when it is whole). This measures that loop with a no-op model (fixed logits, top-5) on tiny
images (8 px PNGs), so nothing else limits it:

| part      | what runs                                                          | what it gives |
|-----------|--------------------------------------------------------------------|---------------|
| replay    | the batches the predictor returns, made beforehand in this process (decode + no-op predictor, not timed), fed to ``assemble_shards`` with a real ``LabelSink`` | the driver alone: rows / busy seconds, its CPU, a cProfile of the loop (``--profile``) |
| ray       | ``ironsight.classify(module=...)`` (the Python API's in-memory module path) on embedded Ray | the loop in place: busy vs waiting for batches, and the driver process's CPU (Ray Data's executor threads in it too) |

Each part writes to a local folder and, with ``--s3``, to ``s3://`` on a moto server in its own
process on loopback (pyarrow's ``endpoint_override``, as for any ``s3://`` OUTPUT). The
ceiling in GPUs is rows/s divided by ``--gpu-rate`` (2,000 images/s per GPU by default): how
many GPUs one driver can keep up with before it becomes the bottleneck. The ray part's
*all-in* figure divides rows by the driver process's CPU seconds while streaming (one core's
worth of Python: the GIL serialises the loop and Ray Data's threads), which is the number that
bounds a job; the loop-only figure leaves Ray Data's share out.

    python benchmarks/driver_ceiling.py --rows 200000 --ray-rows 50000 --s3 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import math
import os
import pstats
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import noop  # noqa: E402

BUCKET = "driver-bench"


def make_batches(cfg, plan, model) -> list[dict]:
    """What the predictor actors would hand the driver: decode + no-op predict every shard."""
    import numpy as np

    from ironsight.cluster.decode import read_and_decode
    from ironsight.cluster.predictor import Predictor

    predictor = Predictor(cfg.source, top_k=cfg.top_k, device="cpu", cpu_threads=1)
    batches = []
    for shard in plan.shards:
        for block in read_and_decode({"shard": np.array([shard.index])}, plan=plan,
                                     preprocess=model.info.preprocess, max_pixels=cfg.max_pixels):
            n = len(block["row"])
            for start in range(0, n, cfg.batch_size):
                batches.append(predictor({k: v[start:start + cfg.batch_size] for k, v in block.items()}))
    return batches


def replay(cfg, plan, model, batches: list[dict], profile: bool) -> dict:
    """Feed ``batches`` to the driver's loop with a real sink on ``cfg.output``; time it."""
    from ironsight.cluster import assembly, pipeline
    from ironsight.cluster.sink import LabelSink

    sink = LabelSink.open(cfg.output, spec_hash=pipeline.output_rows_hash(cfg, plan, model),
                          header=pipeline._sink_header(cfg, plan, model),
                          expected_shards=[s.shard_id for s in plan.shards])
    summary = pipeline.ClassifySummary(output=cfg.output, rows_total=plan.num_rows,
                                       shards_total=len(plan.shards))
    prof = cProfile.Profile() if profile else None
    try:
        with prof or contextlib.nullcontext():
            timing = assembly.assemble_shards(iter(batches), plan, model, plan.shards, sink, summary, False)
    finally:
        sink.close()
    assert summary.rows == plan.num_rows and summary.shards_processed == len(plan.shards), summary
    result = {"rows": summary.rows, "shards": summary.shards_processed, "batches": len(batches), **timing}
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(18)
        result["profile"] = text.getvalue()[text.getvalue().find("   ncalls"):].rstrip()
    return result


def fake_predictions(items: dict, *, shards: dict, template: dict, batch_size: int):
    """Ray Data UDF: for each shard index in ``items``, the predictor's output for its rows in
    blocks of ``batch_size``, copied from ``template`` (no decode, no model): as fast as
    Ray Data can carry blocks to the driver."""
    import numpy as np

    for index in items["shard"]:
        row_start, num_rows = shards[int(index)]
        for start in range(0, num_rows, batch_size):
            n = min(batch_size, num_rows - start)
            rows = np.arange(row_start + start, row_start + start + n, dtype=np.int64)
            out = {k: v[:n].copy() for k, v in template.items()}
            out.update(shard=np.full(n, index, np.int64), row=rows,
                       id=np.array([f"img-{r:08d}" for r in rows], dtype=object))
            yield out


def feed(cfg, plan, model, template: dict) -> dict:
    """Ray Data hands the driver made-up predictions as fast as it can; the driver assembles and
    commits them as in a job (the same ``iter_batches`` call as ``pipeline._stream``)."""
    import ray
    import ray.data

    from ironsight.cluster import assembly, pipeline
    from ironsight.cluster.sink import LabelSink

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = ray.data.from_items([{"shard": s.index} for s in plan.shards], override_num_blocks=len(plan.shards))
        predicted = items.map_batches(
            fake_predictions, batch_size=1, num_cpus=0.5,
            fn_kwargs={"shards": {s.index: (s.row_start, s.num_rows) for s in plan.shards},
                       "template": template, "batch_size": cfg.batch_size})
        sink = LabelSink.open(cfg.output, spec_hash=pipeline.output_rows_hash(cfg, plan, model),
                              header=pipeline._sink_header(cfg, plan, model),
                              expected_shards=[s.shard_id for s in plan.shards])
        summary = pipeline.ClassifySummary(output=cfg.output, rows_total=plan.num_rows,
                                           shards_total=len(plan.shards))
        try:
            batches = predicted.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
            timing = assembly.assemble_shards(batches, plan, model, plan.shards, sink, summary, False)
        finally:
            sink.close()
    finally:
        ray.shutdown()
    assert summary.rows == plan.num_rows, summary
    return {"rows": summary.rows, "shards": summary.shards_processed, **timing}


class _DriverRecord(logging.Handler):
    """Keeps the ``driver`` timing that ``pipeline._stream`` logs at debug level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.timing: dict | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(getattr(record, "driver", None), dict):
            self.timing = record.driver


def in_ray(corpus: str, output: str, args, workdir: str) -> dict:
    """One ``ironsight.classify`` of the no-op module on embedded Ray; the driver's split."""
    from ironsight.jobs import api

    logger = logging.getLogger("ironsight")
    handler, level = _DriverRecord(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    home = os.environ.get("IRONSIGHT_HOME")
    os.environ["IRONSIGHT_HOME"] = os.path.join(workdir, "home")  # not the user's run history
    started = time.perf_counter()
    try:
        result = api.classify(input=corpus, output=output, module=noop.noop_module(), model="noop",
                              preprocess=noop.noop_preprocess(), class_names=noop.class_names(),
                              top_k=5, batch_size=args.batch_size, max_rows_per_shard=args.max_rows_per_shard)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if home is None:
            os.environ.pop("IRONSIGHT_HOME", None)
        else:
            os.environ["IRONSIGHT_HOME"] = home
    wall = time.perf_counter() - started
    summary = result.to_dict()
    if handler.timing is None:
        raise RuntimeError("the run logged no driver timing (pipeline._stream's debug record)")
    return {"rows": summary["rows"], "shards": summary["shards_processed"], "wall_s": wall,
            "job_images_per_s": summary["images_per_s"], **handler.timing}


def rates(r: dict, gpu_rate: float) -> dict:
    """rows/s of the loop alone (busy) and all-in (driver CPU), and the GPUs each can feed."""
    busy = r["rows"] / r["busy_s"] if r["busy_s"] > 0 else math.inf
    cpu = r["rows"] / r["cpu_s"] if r["cpu_s"] > 0 else math.inf
    wall = r["busy_s"] + r["wait_s"]
    return {"io_s": r["commit_s"] - r["commit_cpu_s"],"loop_rows_per_s": busy, "cpu_rows_per_s": cpu, "stream_rows_per_s": r["rows"] / wall if wall else 0.0,
            "driver_cpu_share": r["cpu_s"] / wall if wall else 0.0,
            "loop_gpus": int(busy // gpu_rate), "cpu_gpus": int(cpu // gpu_rate),
            "commit_share": r["commit_s"] / r["busy_s"] if r["busy_s"] > 0 else 0.0,
            "wait_share": r["wait_s"] / (r["wait_s"] + r["busy_s"]) if r["wait_s"] + r["busy_s"] > 0 else 0.0}


def ceiling(result: dict, gpu_rate: float) -> dict:
    """The driver's rows/s on one core, from the parts measured.

    Per row, the driver spends CPU ``b`` (assembly and commit: the replay's CPU per row; with
    Ray Data: fitted, see below); a commit waits ``io`` on the disk or the object store (the
    replay's commit wall time minus its CPU, per row), and the loop itself waits ``wait`` for
    commits on their threads (the replay's ``commit_wait_s`` per row).
    Ray Data's threads in the driver also take a fixed share ``a`` of a core per second of the
    job, whatever the rows: fitted as ``driver CPU = a * seconds + b * rows`` through the feed
    run and the classify run, which carry very different rows per second. So:

    | figure                | rows/s                 | meaning                                   |
    |-----------------------|------------------------|-------------------------------------------|
    | ``serial``            | ``(1 - a) / (b + io)`` | one commit at a time on the loop's thread (before COMMIT_THREADS) |
    | ``threads``           | ``(1 - a) / (b + wait)`` | as written: commits on ``COMMIT_THREADS`` threads |
    | ``overlapped``        | ``(1 - a) / b``        | CPU-bound: no wait on commits at all       |
    """
    reps = result["replay"]
    base = reps.get("local") or next(iter(reps.values()))
    b_loop = base["cpu_s"] / base["rows"]
    a, b, fitted = 0.0, b_loop, False
    feed_r, ray_r = result["feed"].get("local"), result["ray"].get("local")
    if feed_r and ray_r:
        (w1, n1, c1), (w2, n2, c2) = [(r["busy_s"] + r["wait_s"], r["rows"], r["cpu_s"]) for r in (feed_r, ray_r)]
        det = w1 * n2 - w2 * n1
        if det:
            a_fit, b_fit = (c1 * n2 - c2 * n1) / det, (w1 * c2 - w2 * c1) / det
            if 0 <= a_fit < 1 and b_fit > 0:
                a, b, fitted = a_fit, max(b_fit, b_loop), True
    out = {"fixed_core_share": a, "cpu_per_row_us": 1e6 * b, "loop_cpu_per_row_us": 1e6 * b_loop,
           "ray_data_fitted": fitted, "overlapped_rows_per_s": (1 - a) / b, "targets": {}}
    out["overlapped_gpus"] = int(out["overlapped_rows_per_s"] // gpu_rate)
    for target, r in reps.items():
        io = max(0.0, r["io_s"]) / r["rows"]
        wait = r.get("commit_wait_s", r["commit_s"]) / r["rows"]
        serial, threads = (1 - a) / (b + io), (1 - a) / (b + wait)
        out["targets"][target] = {"io_per_row_us": 1e6 * io, "wait_per_row_us": 1e6 * wait,
                                  "serial_rows_per_s": serial, "serial_gpus": int(serial // gpu_rate),
                                  "threads_rows_per_s": threads, "threads_gpus": int(threads // gpu_rate)}
    return out


def render(result: dict) -> str:
    a = result["args"]
    lines = [f"# Driver ceiling ({result['started']})", "",
             f"No-op model (fixed logits, top-5), {noop.SIZE} px PNGs, shards of <= {a['max_rows_per_shard']} "
             f"rows, predictor batches of {a['batch_size']} rows; GPUs fed at {a['gpu_rate']:,.0f} images/s "
             "per GPU. `loop` = rows / seconds the driver's loop was busy (dedupe, assembly, commit); "
             "`all-in` = rows / CPU seconds of the whole driver process meanwhile.", "",
             "| part | OUTPUT | rows | busy s | commit s | waiting s | driver CPU s (% of wall) | "
             "stream rows/s | loop rows/s | all-in rows/s | GPUs (loop / all-in) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for part in ("replay", "feed", "ray"):
        for target, r in result.get(part, {}).items():
            lines.append(f"| {part} | {target} | {r['rows']:,} | {r['busy_s']:.2f} | {r['commit_s']:.2f} | "
                         f"{r['wait_s']:.2f} | {r['cpu_s']:.2f} ({100 * r['driver_cpu_share']:.0f}%) | "
                         f"{r['stream_rows_per_s']:,.0f} | {r['loop_rows_per_s']:,.0f} | "
                         f"{r['cpu_rows_per_s']:,.0f} | {r['loop_gpus']} / {r['cpu_gpus']} |")
    c = result["ceiling"]
    lines += ["", "Per row, the driver spends CPU " + (
        f"{c['cpu_per_row_us']:.1f} us (assembly and commit {c['loop_cpu_per_row_us']:.1f} us, the rest Ray "
        f"Data's iteration), and Ray Data's threads {100 * c['fixed_core_share']:.1f}% of a core whatever the "
        "rows (fitted through the feed and classify runs)" if c["ray_data_fitted"] else
        f"{c['cpu_per_row_us']:.1f} us in assembly and commit (Ray Data's share not measured: run the feed "
        "and ray parts)") + ". A commit waits on storage; one at a time on the loop's thread (serial) "
        "that wait adds to every row, on the commit threads (as written) only what the loop still waits:", ""]
    lines += ["| OUTPUT | storage wait per row (us) | serial rows/s (GPUs) | loop's wait per row (us) | "
              "as written rows/s (GPUs) |", "|---|---:|---:|---:|---:|"]
    for target, t in c["targets"].items():
        lines.append(f"| {target} | {t['io_per_row_us']:.1f} | {t['serial_rows_per_s']:,.0f} ({t['serial_gpus']}) | "
                     f"{t['wait_per_row_us']:.1f} | {t['threads_rows_per_s']:,.0f} ({t['threads_gpus']}) |")
    lines += ["", f"Driver ceiling: **{result['ceiling_rows_per_s']:,.0f} rows/s = {result['ceiling_gpus']} GPUs** "
              f"at {a['gpu_rate']:,.0f} images/s each ({result['ceiling_from']}); CPU-bound (no wait on "
              f"commits at all) {c['overlapped_rows_per_s']:,.0f} rows/s = {c['overlapped_gpus']} GPUs."]
    for target, r in result.get("replay", {}).items():
        if "profile" in r:
            lines += ["", f"cProfile of the replayed loop, {target} (cumulative):", "", "```", r["profile"], "```"]
    lines += ["", "Command: `python benchmarks/driver_ceiling.py " + " ".join(result["argv"]) + "`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows replayed through the loop (default: 200000)")
    ap.add_argument("--ray-rows", type=int, default=50_000,
                    help="rows of the in-place run on embedded Ray; 0 skips it (default: 50000)")
    ap.add_argument("--max-rows-per-shard", type=int, default=4096, help="as `classify` (default: 4096)")
    ap.add_argument("--batch-size", type=int, default=64, help="predictor batch, as `classify` (default: 64)")
    ap.add_argument("--gpu-rate", type=float, default=2000.0, help="images/s one GPU labels (default: 2000)")
    ap.add_argument("--feed", action=argparse.BooleanOptionalAction, default=True,
                    help="Ray Data feeds the driver made-up predictions (the replayed rows) as fast as "
                         "it can (default: on)")
    ap.add_argument("--s3", action="store_true", help="also commit to s3:// on a moto server on loopback")
    ap.add_argument("--profile", action="store_true", help="cProfile the replayed loop")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-driver-bench"))
    ap.add_argument("--results", default=noop.RESULTS, help="where driver-ceiling-<UTC>.json/.md go")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results files")
    args = ap.parse_args(argv)

    from ironsight.cluster import pipeline

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, f"corpus-{args.rows}")
    gen_s = noop.write_tiny_corpus(corpus, args.rows, row_group_size=args.max_rows_per_shard)
    src = noop.noop_source()
    targets = ["local"] + (["s3"] if args.s3 else [])
    result: dict = {"started": started, "argv": list(argv if argv is not None else sys.argv[1:]),
                    "args": vars(args), "corpus_generate_s": gen_s, "replay": {}, "feed": {}, "ray": {}}

    def output(part: str, target: str) -> str:
        if target == "s3":
            return f"s3://{BUCKET}/{part}-{time.time_ns()}"
        path = os.path.join(args.workdir, f"out-{part}")
        shutil.rmtree(path, ignore_errors=True)
        return path

    with noop.moto_s3(BUCKET) if args.s3 else contextlib.nullcontext():
        cfg = pipeline.ClassifyConfig(input=corpus, output=output("replay", "local"), source=src, top_k=5,
                                      batch_size=args.batch_size, max_rows_per_shard=args.max_rows_per_shard)
        plan = pipeline.plan_classify(cfg)
        model = src.validate()
        t = time.perf_counter()
        batches = make_batches(cfg, plan, model)
        print(f"prepared {len(batches)} predictor batches of {plan.num_rows} rows in "
              f"{time.perf_counter() - t:.1f}s (not timed)", file=sys.stderr)
        for target in targets:
            cfg_t = pipeline.ClassifyConfig(**{**cfg.__dict__, "output": output("replay", target)})
            r = replay(cfg_t, plan, model, batches, args.profile)
            result["replay"][target] = {**r, **rates(r, args.gpu_rate)}
        template = {k: v[:args.batch_size] for k, v in batches[0].items()}
        del batches
        if args.feed:
            for target in targets:
                cfg_t = pipeline.ClassifyConfig(**{**cfg.__dict__, "output": output("feed", target)})
                r = feed(cfg_t, plan, model, template)
                result["feed"][target] = {**r, **rates(r, args.gpu_rate)}
        if args.ray_rows:
            ray_corpus = os.path.join(args.workdir, f"corpus-{args.ray_rows}")
            noop.write_tiny_corpus(ray_corpus, args.ray_rows, row_group_size=args.max_rows_per_shard)
            for target in targets:
                r = in_ray(ray_corpus, output("ray", target), args, args.workdir)
                result["ray"][target] = {**r, **rates(r, args.gpu_rate)}

    # The bound a job meets as written: the slowest OUTPUT's rate with threaded commits (see ceiling()).
    result["ceiling"] = ceiling(result, args.gpu_rate)
    rate, target = min((t["threads_rows_per_s"], name) for name, t in result["ceiling"]["targets"].items())
    result.update(ceiling_rows_per_s=rate, ceiling_gpus=int(rate // args.gpu_rate),
                  ceiling_from=f"commits on threads, OUTPUT {target}")
    text = render(result)
    print("\n" + text)
    if not args.no_write:
        stem = noop.write_results("driver-ceiling", result, text, folder=args.results)
        print(f"written: {stem}.json, {stem}.md")
    return result


if __name__ == "__main__":
    main()
