"""What a robustness audit costs, relative to one clean pass over the same images.

End to end, on an embedded Ray, same eval set and model:
  clean     `run_audit` with a suite of no conditions and no attacks (decode + one inference)
  suite     `run_audit` with the chosen suite (default: standard)

and the ratio suite/clean next to the number of variants the suite evaluates (1 clean + one per
condition x severity + one per attack epsilon): an audit that costs ``variants`` x one clean
pass scales as well as it can; the target is at most 1.3x that product.

Where the time goes, measured per component in one process on the same images:
  decode      bytes -> (N, H, W, 3) uint8, once
  conditions  every condition x severity made from every image, as the audit's actors make them
              (corrupt_batch on the decoded batch as a tensor on the CPU, this process's threads)
  inference   one forward pass per variant
  attacks     every attack x epsilon (forward + backward per step)

    python benchmarks/audit_cost.py --images 500 --suite standard
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--model", default="demo_cnn")
    ap.add_argument("--suite", default="standard")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-audit-bench"))
    args = ap.parse_args(argv)

    import pyarrow.dataset as pads
    import torch

    from ironsight.cluster import synthetic
    from ironsight.cluster.decode import decode_batch
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, run_audit
    from ironsight.robustness.attacks import run_attack
    from ironsight.robustness.conditions.batch import corrupt_batch
    from ironsight.robustness.suites import Suite, get_suite

    eval_dir = os.path.join(args.workdir, f"eval-{args.images}")
    if not os.path.isdir(eval_dir):
        synthetic.write_corpus(eval_dir, args.images, seed=2, rows_per_file=500, row_group_size=250)
    source = ModelSource(name=args.model, random_weights=True)
    suite = get_suite(args.suite)
    clean_suite = Suite(name="clean-only", conditions=(), severities=suite.severities, attacks=())
    n_attack = sum(len(a.eps) for a in suite.attacks)
    variants = 1 + len(suite.conditions) * len(suite.severities) + n_attack

    times = {}
    with connect(None):
        for name, s in (("clean", clean_suite), ("suite", suite)):
            out = os.path.join(args.workdir, f"out-{name}")
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            run_audit(AuditConfig(input=eval_dir, output=out, source=source, suite=s, progress=False,
                                  batch_size=256))
            times[name] = time.perf_counter() - start

    # --- where the time goes, one process -------------------------------------------------
    loaded = source.load("cpu")
    model = loaded.module
    table = pads.dataset(eval_dir, format="parquet").to_table(columns=["id", "image", "label"])
    blobs = table.column("image").to_pylist()
    ids = table.column("id").to_pylist()
    labels = torch.tensor(table.column("label").to_pylist())
    parts = {}
    t = time.perf_counter()
    images, _ = decode_batch(blobs, loaded.info.preprocess)
    parts["decode"] = time.perf_counter() - t
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # (N, 3, H, W) in [0, 1]
    t = time.perf_counter()
    for cond in suite.conditions:
        for lo in range(0, len(x), 256):
            for _ in corrupt_batch(cond, x[lo:lo + 256], suite.severities, seed=0, keys=ids[lo:lo + 256],
                                   threads=torch.get_num_threads()):
                pass
    parts["conditions"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(variants - n_attack):
            for chunk in x.split(256):
                model(chunk)
    parts["inference"] = time.perf_counter() - t
    t = time.perf_counter()
    for spec in suite.attacks:
        for eps in spec.eps:
            for xs, ys in zip(x.split(256), labels.split(256), strict=True):
                run_attack(model, xs, ys, name=spec.name, eps=eps, steps=spec.steps, alpha=spec.alpha)
    parts["attacks"] = time.perf_counter() - t

    ratio = times["suite"] / times["clean"]
    print(f"\naudit cost: {args.images} images, model {args.model}, suite {suite.name}: "
          f"{len(suite.conditions)} conditions x {len(suite.severities)} severities + {n_attack} attack epsilons "
          f"= {variants} variants")
    print(f"{'run':<8} {'seconds':>9}")
    print(f"{'clean':<8} {times['clean']:>9.2f}")
    print(f"{'suite':<8} {times['suite']:>9.2f}")
    print(f"suite / clean = {ratio:.1f}x for {variants} variants "
          f"-> {ratio / variants:.2f}x of (clean pass x variants) (target <= 1.3x)")
    total = sum(parts.values())
    print("where the time goes (one process, same images):")
    for k, v in parts.items():
        print(f"  {k:<11} {v:>8.2f}s  {100 * v / total:5.1f}%")
    return {"times": times, "variants": variants, "ratio": ratio, "per_variant": ratio / variants,
            "parts": parts, "decoded": int(np.prod(images.shape[:1]))}


if __name__ == "__main__":
    main()
