"""Does `torch.compile` speed up the predictor? Eager and compiled side by side, per model.

For each model: a :class:`ironsight.cluster.predictor.Predictor` on this machine's device (all cores as
torch threads on CPU), fed uint8 batches of the model's input size exactly as the actor feeds
it (``Predictor.logits``). Times eager inference, then compiles the module (``torch.compile``,
default mode), reports the compile time (first call), and times the compiled module on the
same batches. A batch of another size follows, because a job's last batch of each shard is
shorter: the recompile it triggers is part of what compile costs in a job.

    python benchmarks/torch_compile.py                       # demo_cnn and resnet18
    python benchmarks/torch_compile.py --models resnet50 --batch-size 128 --seconds 20

Compile is kept in Ironsight only if this shows a gain that pays for the compile time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def rate(predictor, batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``predictor.logits`` on ``batch``, repeated for about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.logits(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def measure(model: str, batch_size: int, seconds: float) -> dict:
    import torch

    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.predictor import Predictor

    predictor = Predictor(ModelSource(name=model, random_weights=True), device="auto",
                          cpu_threads=os.cpu_count())
    shape = ModelSource(name=model, random_weights=True).load("cpu").info.preprocess.input_shape  # (3, H, W)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (batch_size, shape[1], shape[2], 3), dtype=np.uint8)
    short = batch[: max(1, batch_size // 3)]
    predictor.logits(batch)  # warm-up
    eager = rate(predictor, batch, seconds)
    eager_out = predictor.logits(batch)
    predictor.model = torch.compile(predictor.model)
    t = time.perf_counter()
    compiled_out = predictor.logits(batch)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    predictor.logits(short)
    recompile_s = time.perf_counter() - t
    compiled = rate(predictor, batch, seconds)
    return {"model": model, "device": predictor.device, "batch": batch_size, "eager": eager,
            "compiled": compiled, "ratio": compiled / eager, "compile_s": compile_s,
            "recompile_s": recompile_s,
            "max_abs_diff": float((eager_out - compiled_out).abs().max()),
            # images the compiled model must label before its gain pays for the compile
            "break_even_images": (compile_s + recompile_s) / (1 / eager - 1 / compiled) if compiled > eager else None}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo_cnn,resnet18", help="comma-separated (default: demo_cnn,resnet18)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="timing window per measurement (default: 10)")
    args = ap.parse_args(argv)
    results = [measure(m.strip(), args.batch_size, args.seconds) for m in args.models.split(",") if m.strip()]
    print(f"\ntorch.compile vs eager, batch {args.batch_size}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'model':<12} {'device':<6} {'eager/s':>9} {'compiled/s':>11} {'ratio':>6} {'compile s':>10} "
          f"{'recompile s':>12} {'break-even images':>18} {'max |diff|':>11}")
    for r in results:
        be = f"{r['break_even_images']:,.0f}" if r["break_even_images"] else "never"
        print(f"{r['model']:<12} {r['device']:<6} {r['eager']:>9.1f} {r['compiled']:>11.1f} {r['ratio']:>5.2f}x "
              f"{r['compile_s']:>10.1f} {r['recompile_s']:>12.1f} {be:>18} {r['max_abs_diff']:>11.2e}")
    return results


if __name__ == "__main__":
    main()
