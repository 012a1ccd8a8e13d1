"""What ``autoattack`` costs per image on this CPU, next to ``fgsm`` and ``pgd``, by stage.

Every attack goes through :func:`ironsight.robustness.attacks.run_attack`, as in the audit,
on ``demo_cnn`` (8 classes, about 0.4M parameters, normalization inside; random weights:
cost does not depend on training, only on which images survive) at each ``--sizes`` (the
network is fully convolutional with global pooling, so any size runs). Labels are the model's
own predictions, so every image starts correctly classified.

Two budgets for autoattack:
  worst   eps = 1e-4 / 255: no stage can flip a prediction, every image runs all four
          stages in full (the cost of an image the model classifies robustly)
  8/255   the usual budget; on this non-robust model most images fall in APGD-CE

Passes are counted per image with a forward hook: a *gradient pass* is a forward whose input
requires a gradient (a backward follows), a *forward pass* is any other.

    python benchmarks/autoattack_cost.py --sizes 32 224 --images 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: no spin-waiting on a shared CPU)")
    ap.add_argument("--attacks", nargs="+", default=["fgsm", "pgd", "autoattack@8", "autoattack@worst"])
    ap.add_argument("--worst-max-size", type=int, default=64,
                    help="run autoattack@worst only up to this size (it takes minutes per image)")
    args = ap.parse_args(argv)

    import torch
    import torchattacks
    from torch import nn

    from ironsight.cluster.models.demo_cnn import DEMO_PREPROCESS, demo_cnn
    from ironsight.cluster.models.registry import Normalize
    from ironsight.cluster.synthetic import render_arrays
    from ironsight.robustness.attacks import run_attack

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(Normalize(DEMO_PREPROCESS.mean, DEMO_PREPROCESS.std), demo_cnn()).eval()

    stage = ["-"]
    counts: Counter = Counter()

    def hook(_module, inputs, _output):
        x = inputs[0]
        kind = "grad" if torch.is_grad_enabled() and x.requires_grad else "fwd"
        counts[(stage[0], kind)] += x.shape[0]

    model.register_forward_hook(hook)
    for cls in (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB, torchattacks.Square):
        def tagged(self, images, labels, _inner=cls.forward, _name=cls.__name__):
            stage[0] = _name
            try:
                return _inner(self, images, labels)
            finally:
                stage[0] = "-"
        cls.forward = tagged

    rows = []
    for size in args.sizes:
        imgs, _ = render_arrays(11, 0, args.images, size=size)
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255).contiguous()
        with torch.no_grad():
            y = model(x).argmax(1)
        t_fwd, t_grad = _pass_seconds(model, x, y)
        counts.clear()
        rows.append({"model": "demo_cnn (random init)", "size": size, "threads": args.threads,
                     "seconds_per_forward_pass": round(t_fwd, 5),
                     "seconds_per_gradient_pass": round(t_grad, 5)})
        print(json.dumps(rows[-1]), flush=True)
        for spec in args.attacks:
            if spec == "autoattack@worst" and size > args.worst_max_size:
                continue  # minutes per image: projected from the pass counts instead
            name, _, budget = spec.partition("@")
            eps = 1e-4 / 255 if budget == "worst" else float(budget or 8) / 255
            counts.clear()
            started = time.perf_counter()
            adv = run_attack(model, x, y, name=name, eps=eps, steps=10, seed=0)
            seconds = time.perf_counter() - started
            n = args.images
            grad_passes = sum(c for (_, k), c in counts.items() if k == "grad") / n
            fwd_passes = sum(c for (_, k), c in counts.items() if k == "fwd") / n
            by_stage = {f"{s}:{k}": round(c / n, 1) for (s, k), c in sorted(counts.items())}
            with torch.no_grad():
                robust = float((model(adv).argmax(1) == y).float().mean())
            row = {
                "model": "demo_cnn (random init)", "size": size, "attack": spec, "images": n,
                "threads": args.threads, "seconds_per_image": round(seconds / n, 2),
                "gradient_passes_per_image": round(grad_passes, 1),
                "forward_passes_per_image": round(fwd_passes, 1),
                # the same passes at this size's measured per-pass times (checks the total)
                "passes_x_pass_times": round(grad_passes * t_grad + fwd_passes * t_fwd, 2),
                "by_stage": by_stage, "robust_accuracy": robust,
                "load_avg_1min": round(os.getloadavg()[0], 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _pass_seconds(model, x, y, reps: int = 5) -> tuple[float, float]:
    """Seconds per image of one forward pass and of one gradient pass (forward + backward
    to the input, as the attacks do), best of ``reps``."""
    import torch
    import torch.nn.functional as F

    fwd, grad = [], []
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(reps):
        started = time.perf_counter()
        with torch.no_grad():
            model(x)
        fwd.append(time.perf_counter() - started)
        xg = x.clone().requires_grad_()
        started = time.perf_counter()
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        grad.append(time.perf_counter() - started)
    for p in model.parameters():
        p.requires_grad_(True)
    return min(fwd) / len(x), min(grad) / len(x)


if __name__ == "__main__":
    main()
