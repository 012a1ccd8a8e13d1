"""Bulk-labeling throughput, side by side on one corpus, one model, one machine.

Runs, in this order, on the same synthetic Parquet corpus and the same model:

  recipe    Ray Data's documented batch-inference recipe ("Working with Images: performing
            inference on images"): read_parquet -> map (decode and torchvision transforms per
            row, float32 tensors) -> map_batches(model class, ActorPoolStrategy) ->
            write_parquet. Its pool is sized as that page's reader would on this machine:
            one 1-CPU actor per two cores (the other core runs the map stage); Ray gives
            each actor torch threads = its CPUs.
  loop      one process: read Parquet, decode with PIL, torchvision transforms, batched
            inference, write Parquet. No Ray.
  ceiling   the model alone in one process: the same batch size, the corpus decoded to
            uint8 beforehand (not timed), converted and run as the predictor does
            (``Predictor.logits``), with all cores as torch threads; also with 1 thread,
            and the faster of the two is the ceiling (on a busy machine torch's spinning
            threads often lose to one thread; an upper bound must not be the slower one).
  ironsight `ironsight.cluster.pipeline.run_classify` (what `ironsight classify` runs) into a fresh OUTPUT.

and prints images/s for each and the ratios. The ceiling leaves decoding out; the script also
times Ironsight's decode per image on one core and prints the most any job that decodes on the
same cores could reach against the ceiling (for demo_cnn at 64 px, decoding is a fifth of the
model's cost, so that bound is near 0.8x; for resnet18 at 224 px the model is the work). ``--repeat R`` runs all four R times, in rounds
(recipe and ironsight swap places every round), and reports the median of each rate and of
each round's ratios: on a shared machine only runs taken minutes apart compare. With
``--rss`` it also runs ``ironsight classify`` in a fresh process on corpora N and 4N images and
reports the driver's peak RSS.

    python benchmarks/classify_throughput.py --images 4000 --model demo_cnn --repeat 3
    python benchmarks/classify_throughput.py --images 1000 --model resnet18 --image-size 224
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def make_corpus(path: str, n: int, size: int) -> None:
    from ironsight.cluster import synthetic

    if not os.path.isdir(path):
        synthetic.write_corpus(path, n, seed=99, rows_per_file=1000, row_group_size=250, size=size)


def load(model: str):
    from ironsight.cluster.models import ModelSource

    return ModelSource(name=model, random_weights=True).load("cpu")


def torchvision_transform(pre):
    from torchvision import transforms

    interp = transforms.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else transforms.InterpolationMode.BILINEAR
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Resize(pre.resize, interpolation=interp, antialias=True),
         transforms.CenterCrop(pre.crop)]
    )  # normalization is the model's first layer, as in Ironsight


def run_recipe(corpus: str, out: str, model_name: str, batch_size: int, actors: int) -> float:
    """Ray Data's batch-inference recipe, written the way Ray's docs write it."""
    import ray
    import torch
    from PIL import Image
    from ray.data import ActorPoolStrategy

    loaded = load(model_name)
    transform = torchvision_transform(loaded.info.preprocess)

    def preprocess(row: dict) -> dict:
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        return {"id": row["id"], "transformed_image": transform(image).numpy()}

    class ClassifierModel:
        def __init__(self) -> None:
            self.model = load(model_name).module.eval()

        def __call__(self, batch: dict) -> dict:
            torch_batch = torch.from_numpy(batch["transformed_image"])
            with torch.inference_mode():
                prediction = self.model(torch_batch)
            return {"id": batch["id"], "label": prediction.argmax(dim=1).numpy()}

    start = time.perf_counter()
    ds = ray.data.read_parquet(corpus, columns=["id", "image"]).map(preprocess)
    ds = ds.map_batches(ClassifierModel, compute=ActorPoolStrategy(size=actors), batch_size=batch_size)
    ds.write_parquet(out)
    return time.perf_counter() - start


def run_loop(corpus: str, out: str, model_name: str, batch_size: int) -> float:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    loaded = load(model_name)
    transform = torchvision_transform(loaded.info.preprocess)
    model = loaded.module.eval()
    start = time.perf_counter()
    ids, labels = [], []
    for batch in pads.dataset(corpus, format="parquet").to_batches(columns=["id", "image"], batch_size=batch_size):
        x = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in batch.column("image").to_pylist()])
        with torch.inference_mode():
            labels.append(model(x).argmax(1).numpy())
        ids += batch.column("id").to_pylist()
    pq.write_table(pa.table({"id": ids, "label": np.concatenate(labels)}), os.path.join(out, "labels.parquet"))
    return time.perf_counter() - start


def decoded_batches(corpus: str, model_name: str, batch_size: int) -> tuple[list[np.ndarray], float]:
    """The corpus as the predictor receives it: (B, H, W, 3) uint8 batches (for the ceiling),
    and the CPU seconds that decoding took per image (Ironsight's decode, on one core)."""
    import pyarrow.dataset as pads

    from ironsight.cluster.decode import decode_batch

    pre = load(model_name).info.preprocess
    table = pads.dataset(corpus, format="parquet").to_table(columns=["image"])
    blobs = table.column("image").to_pylist()
    cpu = time.process_time()
    batches = [decode_batch(blobs[i:i + batch_size], pre)[0] for i in range(0, len(blobs), batch_size)]
    return batches, (time.process_time() - cpu) / len(blobs)


def run_ceiling(batches: list[np.ndarray], model_name: str, threads: int) -> float:
    """Seconds for the model alone over ``batches``, in this process, on ``threads`` threads."""
    import torch

    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.predictor import Predictor

    before = torch.get_num_threads()
    try:
        predictor = Predictor(ModelSource(name=model_name, random_weights=True), device="cpu", cpu_threads=threads)
        predictor.logits(batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            predictor.logits(batch)  # uint8 -> float32 [0, 1] -> model, as in the actor
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def run_ironsight(corpus: str, out: str, model_name: str, batch_size: int, actors: int | None) -> float:
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.pipeline import ClassifyConfig, run_classify

    start = time.perf_counter()
    run_classify(
        ClassifyConfig(input=corpus, output=out, source=ModelSource(name=model_name, random_weights=True),
                       batch_size=batch_size, actors=actors, progress=False)
    )
    return time.perf_counter() - start


RSS_SNIPPET = """
import resource, sys, json
sys.path.insert(0, {root!r})
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig, run_classify
from ironsight.cluster.raycluster import connect
with connect(None):
    run_classify(ClassifyConfig(input={corpus!r}, output={out!r}, progress=False,
                 source=ModelSource(name={model!r}, random_weights=True), batch_size={bs}))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def peak_rss_mb(corpus: str, out: str, model: str, bs: int) -> float:
    code = RSS_SNIPPET.format(root=os.path.dirname(HERE), corpus=corpus, out=out, model=model, bs=bs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--image-size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--model", default="demo_cnn")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--actors", type=int, default=None,
                    help="predictor actors for both ironsight and the recipe (default: each its own sizing)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all four runs; medians are reported")
    ap.add_argument("--rss", action="store_true", help="also measure driver peak RSS at N and 4N images")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-bench"))
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")

    import ray
    from ray import cloudpickle

    from ironsight.cluster.raycluster import connect

    if __name__ != "__main__":
        # Imported (run_all, the tests): Ray's workers cannot import this file by name, so the
        # recipe's functions and class travel by value, as they do when it runs as a script.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    corpus = os.path.join(args.workdir, f"corpus-{args.images}-{args.image_size}")
    make_corpus(corpus, args.images, args.image_size)
    outs = {k: os.path.join(args.workdir, f"out-{k}") for k in ("recipe", "loop", "ironsight")}
    batches, decode_s = decoded_batches(corpus, args.model, args.batch_size)
    cores = os.cpu_count() or 1
    rounds: list[dict] = []
    with connect(None):
        ray_cpus = ray.cluster_resources().get("CPU", 1)
        recipe_actors = args.actors or max(1, int(ray_cpus // 2))
        for r in range(args.repeat):
            times: dict[str, float] = {}
            order = ("recipe", "ironsight") if r % 2 == 0 else ("ironsight", "recipe")
            for k in (*order, "loop"):
                shutil.rmtree(outs[k], ignore_errors=True)
                os.makedirs(outs[k], exist_ok=True)
                if k == "recipe":
                    times[k] = run_recipe(corpus, outs[k], args.model, args.batch_size, recipe_actors)
                elif k == "ironsight":
                    times[k] = run_ironsight(corpus, outs[k], args.model, args.batch_size, args.actors)
                else:
                    times[k] = run_loop(corpus, outs[k], args.model, args.batch_size)
            ceilings = {t: run_ceiling(batches, args.model, t) for t in sorted({cores, 1}, reverse=True)}
            best = min(ceilings, key=ceilings.get)
            times["ceiling"] = ceilings[best]
            rate = {k: args.images / v for k, v in times.items()}
            rounds.append({"images_per_s": rate, "ceiling_threads": best,
                           "ceiling_images_per_s_by_threads": {t: args.images / v for t, v in ceilings.items()},
                           "load_avg_1m": os.getloadavg()[0]})
            print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
                  + f" images/s (ceiling on {best} thread(s)); load average {rounds[-1]['load_avg_1m']:.1f}",
                  flush=True)
    keys = ("recipe", "loop", "ceiling", "ironsight")
    rate = {k: statistics.median(rd["images_per_s"][k] for rd in rounds) for k in keys}

    def ratio(base: str) -> float:
        return statistics.median(rd["images_per_s"]["ironsight"] / rd["images_per_s"][base] for rd in rounds)

    print(f"\nclassify throughput: {args.images} images of {args.image_size}px, model {args.model}, "
          f"batch {args.batch_size}, {ray_cpus:.0f} CPUs, recipe {recipe_actors} actor(s), "
          f"{args.repeat} round(s), load average {[round(rd['load_avg_1m'], 1) for rd in rounds]}")
    print(f"{'run':<10} {'images/s':>10}   (median of rounds)")
    for k in keys:
        print(f"{k:<10} {rate[k]:>10.1f}")
    result = {
        "images": args.images, "image_size": args.image_size, "model": args.model, "images_per_s": rate,
        "ironsight_vs_recipe": ratio("recipe"),
        "ironsight_vs_loop": ratio("loop"),
        "ironsight_vs_ceiling": ratio("ceiling"),
        "repeat": args.repeat, "rounds": rounds, "recipe_actors": recipe_actors,
    }
    print(f"ironsight / recipe  = {result['ironsight_vs_recipe']:.2f}x  (median of per-round ratios)")
    print(f"ironsight / loop    = {result['ironsight_vs_loop']:.2f}x")
    print(f"ironsight / ceiling = {result['ironsight_vs_ceiling']:.2f}x")
    # The ceiling leaves decoding out; a job on the same cores must also decode every image.
    # With perfect overlap and no other cost, the most it can reach is this fraction of it:
    bound = 1 / (1 + rate["ceiling"] * decode_s / cores)
    result["decode_ms_per_image"] = decode_s * 1e3
    result["ceiling_bound_with_decode"] = bound
    print(f"decoding costs {decode_s * 1e3:.2f} ms of one core per image: a job that decodes on the same "
          f"{cores} cores reaches at most {bound:.2f}x the ceiling")
    if args.rss:
        small, large = args.images, args.images * 4
        big_corpus = os.path.join(args.workdir, f"corpus-{large}-{args.image_size}")
        make_corpus(big_corpus, large, args.image_size)
        rss = {}
        for n, c in ((small, corpus), (large, big_corpus)):
            out = os.path.join(args.workdir, f"out-rss-{n}")
            shutil.rmtree(out, ignore_errors=True)
            rss[n] = peak_rss_mb(c, out, args.model, args.batch_size)
        result["peak_rss_mb"] = rss
        result["rss_ratio_4x"] = rss[large] / rss[small]
        print(f"driver peak RSS: {small} images {rss[small]:.0f} MB, {large} images {rss[large]:.0f} MB, "
              f"ratio {result['rss_ratio_4x']:.2f}x")
    return result


if __name__ == "__main__":
    main()
