"""The classify benchmark matrix: Ironsight vs Ray Data's recipe vs the model alone, per cell.

Cells: models x source images x machine loads.

| axis          | values                                                                    |
|---------------|---------------------------------------------------------------------------|
| model @ input | ``demo_cnn`` @ 64, ``mobilenet_v3_small`` @ 224, ``resnet50`` @ 224 (random weights: speed does not depend on their values) |
| source images | synthetic JPEGs (``ironsight.cluster.synthetic``) of 64 px and of 512 px   |
| load          | ``idle`` (nothing started), ``busy``: :class:`background_load.BackgroundLoad` with 2 busy-loop processes at 50% duty (one core's worth of work over the 2 cores), started before the cell and stopped after it |

In every cell, one after the other on the same corpus, model and load (``--repeat R``: R
rounds, recipe and Ironsight swapping places each round; medians reported):

  recipe     Ray Data's batch-inference recipe as Ray's docs write it
             (``classify_throughput.run_recipe``), its pool one 1-CPU actor per two cores.
  ironsight  ``run_classify`` (what ``ironsight classify`` runs), whole job, start-up included.
  model      the model alone in this process on the corpus decoded beforehand (not timed),
             the faster of all cores or 1 thread (``classify_throughput.run_ceiling``).

plus the cost profile the driver measured in that cell (``measure_cost``: decode ms, model ms
on 1 and 2 threads, the second thread's efficiency) and the CPU plan it gave
(``plan_resources``). Targets in every cell: Ironsight >= 1.5x the recipe and >= 0.8x the
model alone. Images per model are sized so that the whole default matrix runs in about 20
minutes on 2 idle cores; ``--quick`` runs tiny corpora to check it all works (its rates are
start-up, not throughput). Writes ``RESULTS/matrix-<UTC>.md`` and ``.json``.

    python benchmarks/matrix.py                       # the 12 cells, default sizes
    python benchmarks/matrix.py --quick --cells demo_cnn:64:idle
    python benchmarks/matrix.py --models resnet50 --loads busy --repeat 2
    python benchmarks/matrix.py --contention --repeat 2   # threads vs load only, ~3 minutes

``--contention`` measures only what the plan measures (``measure_cost``: the model on 1 and 2
torch threads, decode per image) for each model under three loads in turn, side by side in
one process, round after round: idle, ``busy``, and one busy loop at 100%. It answers whether
a CPU actor's torch threads beside other work help or hurt (the 2nd thread's efficiency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import classify_throughput as ct  # noqa: E402
from background_load import BackgroundLoad  # noqa: E402

# model -> (images, batch size, --quick images): sized for ~20 s of model time per run on 2 cores
MODELS: dict[str, tuple[int, int, int]] = {
    "demo_cnn": (6000, 64, 128),
    "mobilenet_v3_small": (900, 64, 48),
    "resnet50": (160, 32, 16),
}
SOURCES = (64, 512)
LOADS: dict[str, tuple[int, float]] = {"idle": (0, 1.0), "busy": (2, 0.5)}
TARGET_RECIPE, TARGET_MODEL = 1.5, 0.8


def _plan(cost) -> dict:
    import ray

    from ironsight.cluster.engine import plan_resources

    res = plan_resources(None, "cpu", resources=ray.cluster_resources(), cost=cost)
    return {k: res[k] for k in ("size", "threads", "num_cpus", "decode_tasks")}


def run_cell(model: str, source: int, load: str, *, images: int, batch: int, repeat: int,
             workdir: str) -> dict:
    """One cell: ``repeat`` rounds of recipe, ironsight and model alone under ``load``."""
    import ray

    from ironsight.cluster.corpus import plan_corpus
    from ironsight.cluster.decode import DEFAULT_MAX_PIXELS
    from ironsight.cluster.predictor import measure_cost

    corpus = os.path.join(workdir, f"corpus-{images}-{source}")
    ct.make_corpus(corpus, images, source)
    batches, decode_s = ct.decoded_batches(corpus, model, batch)
    procs, duty = LOADS[load]
    background = BackgroundLoad(procs, duty)
    rounds = []
    recipe_actors = max(1, int(ray.cluster_resources().get("CPU", 1) // 2))
    with background:
        time.sleep(2.0 if procs else 0.0)  # let the load settle in before the first run
        cost = measure_cost(ct.load(model), plan_corpus(corpus), max_pixels=DEFAULT_MAX_PIXELS)
        for r in range(repeat):
            times: dict[str, float] = {}
            for k in (("recipe", "ironsight") if r % 2 == 0 else ("ironsight", "recipe")):
                out = os.path.join(workdir, f"out-{k}")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out, exist_ok=True)
                if k == "recipe":
                    times[k] = ct.run_recipe(corpus, out, model, batch, recipe_actors)
                else:
                    times[k] = ct.run_ironsight(corpus, out, model, batch, None)
            cores = os.cpu_count() or 1
            ceilings = {t: ct.run_ceiling(batches, model, t) for t in sorted({cores, 1}, reverse=True)}
            times["model"] = min(ceilings.values())
            rate = {k: images / v for k, v in times.items()}
            rounds.append({"images_per_s": rate, "load_avg_1m": os.getloadavg()[0],
                           "model_threads": min(ceilings, key=ceilings.get)})
            print(f"  {model} @ {source}px {load} round {r + 1}/{repeat}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
                  + f" images/s; load average {rounds[-1]['load_avg_1m']:.1f}", flush=True)

    def med(f) -> float:
        return statistics.median(f(rd["images_per_s"]) for rd in rounds)

    vs_recipe = med(lambda x: x["ironsight"] / x["recipe"])
    vs_model = med(lambda x: x["ironsight"] / x["model"])
    return {
        "model": model, "source_px": source, "load": load, "load_setup": background.describe(),
        "images": images, "batch_size": batch, "repeat": repeat, "recipe_actors": recipe_actors,
        "images_per_s": {k: med(lambda x, k=k: x[k]) for k in ("recipe", "ironsight", "model")},
        "vs_recipe": vs_recipe, "vs_model": vs_model,
        "met_recipe": vs_recipe >= TARGET_RECIPE, "met_model": vs_model >= TARGET_MODEL,
        "decode_ms_per_image": decode_s * 1e3,
        "cost": {"decode_ms": cost.decode_ms, "model_ms_1_thread": cost.model_ms,
                 "model_ms_2_threads": cost.model_ms_2, "two_thread_efficiency": cost.two_thread_efficiency},
        "plan": _plan(cost), "rounds": rounds,
    }


def render(cells: list[dict]) -> str:
    head = ("model", "source", "load", "recipe/s", "ironsight/s", "model alone/s", "vs recipe (>= 1.5x)",
            "vs model (>= 0.8x)", "plan (actors x threads, decode tasks)", "2nd thread eff.")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    for c in cells:
        if "error" in c:
            lines.append(f"| {c['model']} | {c['source_px']} px | {c['load']} | failed: {c['error']} |"
                         + " |" * (len(head) - 4))
            continue
        ips, p, eff = c["images_per_s"], c["plan"], c["cost"]["two_thread_efficiency"]
        lines.append(
            f"| {c['model']} | {c['source_px']} px | {c['load']} | {ips['recipe']:.1f} | {ips['ironsight']:.1f} | "
            f"{ips['model']:.1f} | {c['vs_recipe']:.2f}x {met(c['met_recipe'])} | "
            f"{c['vs_model']:.2f}x {met(c['met_model'])} | {p['size']} x {p['threads']}, {p['decode_tasks']} | "
            + ("n/a" if eff is None else f"{eff:.2f}") + " |")
    return "\n".join(lines)


def rows_for_run_all(result: dict) -> list[dict]:
    """One row of run_all's table per cell (measure | baseline | ironsight | ratio | target | met?)."""
    rows = []
    for c in result.get("cells", []):
        measure = f"matrix: {c['model']} from {c['source_px']} px JPEGs, {c['load']}"
        if "error" in c:
            rows.append({"measure": measure, "baseline": "failed", "ironsight": c["error"], "ratio": None,
                         "target": ">= 1.5x recipe, >= 0.8x model", "met": None, "note": ""})
            continue
        ips = c["images_per_s"]
        rows.append({"measure": measure, "baseline": f"recipe {ips['recipe']:.1f}/s, model alone {ips['model']:.1f}/s",
                     "ironsight": f"{ips['ironsight']:.1f}/s", "ratio": c["vs_recipe"],
                     "target": ">= 1.5x recipe, >= 0.8x model", "met": c["met_recipe"] and c["met_model"],
                     "note": f"vs the model alone {c['vs_model']:.2f}x"})
    return rows


def contention(models: list[str], repeat: int, workdir: str) -> list[dict]:
    """``measure_cost`` per model under idle / busy / one full busy loop, ``repeat`` rounds."""
    from ironsight.cluster.corpus import plan_corpus
    from ironsight.cluster.decode import DEFAULT_MAX_PIXELS
    from ironsight.cluster.predictor import measure_cost

    corpus = os.path.join(workdir, "corpus-64-64")
    ct.make_corpus(corpus, 64, 64)
    plan = plan_corpus(corpus)
    rows = []
    for model in models:
        loaded = ct.load(model)
        for r in range(repeat):
            for name, (procs, duty) in (*LOADS.items(), ("one-core", (1, 1.0))):
                with BackgroundLoad(procs, duty):
                    time.sleep(1.0 if procs else 0.0)
                    c = measure_cost(loaded, plan, max_pixels=DEFAULT_MAX_PIXELS, budget_s=1.0)
                    rows.append({"model": model, "load": name, "round": r + 1, "decode_ms": c.decode_ms,
                                 "model_ms_1_thread": c.model_ms, "model_ms_2_threads": c.model_ms_2,
                                 "two_thread_efficiency": c.two_thread_efficiency,
                                 "load_avg_1m": os.getloadavg()[0]})
                print("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[-1].items()), flush=True)
    return rows


def render_contention(rows: list[dict]) -> str:
    head = ("model", "load", "round", "model ms/image, 1 thread", "2 threads", "2nd thread efficiency",
            "decode ms/image", "1-min load average")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        two = r["model_ms_2_threads"]
        lines.append(f"| {r['model']} | {r['load']} | {r['round']} | {r['model_ms_1_thread']:.1f} | "
                     + ("n/a" if two is None else f"{two:.1f}") + " | "
                     + ("n/a" if two is None else f"{r['two_thread_efficiency']:.2f}")
                     + f" | {r['decode_ms']:.2f} | {r['load_avg_1m']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny corpora: checks the matrix runs, measures start-up")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--sources", default=",".join(map(str, SOURCES)), help="source image sides in px")
    ap.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated subset of {', '.join(LOADS)}")
    ap.add_argument("--cells", default=None, help="explicit cells MODEL:SOURCE:LOAD,... (overrides the three above)")
    ap.add_argument("--images", type=int, default=None, help="images per cell for every model (default: per model)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per cell; medians are reported")
    ap.add_argument("--contention", action="store_true",
                    help="only the plan's measurements (model on 1 vs 2 threads) under idle/busy/one-core loads")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-matrix"))
    args = ap.parse_args(argv)
    if args.cells:
        cells = [tuple(c.split(":")) for c in args.cells.split(",") if c]
        if any(len(c) != 3 for c in cells):
            ap.error("--cells takes MODEL:SOURCE:LOAD, e.g. demo_cnn:64:idle")
        cells = [(m, int(s), ld) for m, s, ld in cells]
    else:
        cells = [(m, int(s), ld) for ld in args.loads.split(",") for m in args.models.split(",")
                 for s in args.sources.split(",")]
    bad = [c for c in cells if c[0] not in MODELS or c[2] not in LOADS]
    if bad or args.repeat < 1:
        ap.error(f"unknown cell(s) {bad} (models {list(MODELS)}, loads {list(LOADS)}) or --repeat < 1")

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stamp = started.replace(":", "").replace("-", "")[:13]
    os.makedirs(args.results, exist_ok=True)
    if args.contention:
        rows = contention(sorted({c[0] for c in cells}, key=list(MODELS).index), args.repeat, args.workdir)
        text = (f"Torch threads vs machine load, {started}, {os.cpu_count()} CPUs, `matrix.py --contention`: "
                "each row measured in one process, the loads in turn, round after round\n\n"
                + render_contention(rows) + "\n")
        print("\n" + text)
        stem = os.path.join(args.results, f"contention-{stamp}")
        with open(stem + ".md", "w") as f:
            f.write(text)
        with open(stem + ".json", "w") as f:
            json.dump({"started": started, "rows": rows}, f, indent=1)
        return {"contention": rows, "written": stem}

    import ray
    from ray import cloudpickle

    from ironsight.cluster.raycluster import connect

    # Ray's workers cannot import classify_throughput by name: the recipe's UDFs travel by value.
    cloudpickle.register_pickle_by_value(ct)
    t0 = time.perf_counter()
    out: list[dict] = []
    with connect(None):
        cpus = ray.cluster_resources().get("CPU", 1)
        for model, source, load in cells:
            images, batch, quick = MODELS[model]
            n = args.images or (quick if args.quick else images)
            print(f"=== {model} @ {source}px source, {load}: {n} images, batch {batch}", flush=True)
            try:
                out.append(run_cell(model, source, load, images=n, batch=batch, repeat=args.repeat,
                                    workdir=args.workdir))
            except Exception as exc:  # noqa: BLE001 - one failed cell must not hide the others
                out.append({"model": model, "source_px": source, "load": load,
                            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})
                print(f"  failed: {out[-1]['error']}", flush=True)
    table = render(out)
    header = (f"Classify matrix, {started} ({'--quick: start-up dominated, not throughput' if args.quick else 'default sizes'}), "
              f"{cpus:.0f} CPUs, {args.repeat} round(s) per cell, {time.perf_counter() - t0:.0f} s in all; "
              f"busy = {BackgroundLoad(*LOADS['busy']).describe()}")
    print("\n" + header + "\n\n" + table)
    result = {"started": started, "quick": args.quick, "cpus": cpus, "repeat": args.repeat,
              "seconds": time.perf_counter() - t0, "cells": out}
    stem = os.path.join(args.results, f"matrix-{stamp}" + ("-quick" if args.quick else ""))
    with open(stem + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwritten: {stem}.md, {stem}.json")
    result["written"] = stem
    return result


if __name__ == "__main__":
    main()
