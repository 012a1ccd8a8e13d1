"""The audit a user writes by hand in one process vs ``ironsight audit``, side by side.

Same eval set (synthetic JPEGs), same model (a torchvision architecture with random weights
written to a local file, loaded by both), same variants: every image clean, at each
corruption x severity, and under each attack x eps.

| side        | what runs                                                                       |
|-------------|---------------------------------------------------------------------------------|
| handwritten | one process: PIL decode + torchvision resize/crop, ``imagecorruptions.corrupt`` per image, the model in batches under ``inference_mode``, torchattacks ``FGSM`` / ``PGD`` (random start, step ``2.5 eps / steps``) per batch, then a prediction of each adversarial batch |
| ironsight   | what ``ironsight audit`` runs: an embedded Ray started (timed), ``run_audit`` (planning, decode tasks, predictor actors that make every variant on their device and predict it, attacks, reports; activation maps off) |
| corruption  | Ironsight's corruption step alone, as its actors run it: the same shards decoded in this process (``decode_eval_rows``, timed apart), then ``corrupt_batch`` of every condition at every severity on each decoded block as a CPU tensor, on the torch threads of this process |

Printed and written (``RESULTS/audit-vs-handwritten-<UTC>.json`` and ``.md``, ``-quick``
appended for a smoke run): variants/s of each side (variants = images x (1 + corruptions x severities + attacks x eps)), the ratio
ironsight / handwritten (target >= 2x), and the corruption share: the corruption step's
seconds over the audit's wall time, and its CPU seconds over the audit's CPU budget (wall x the
cores Ray was given), and the handwritten side's own corruption share (its timers).

The default corruptions are 8 of the 16 that the reference package runs on numpy 2
(``fog``, ``glass_blur`` and ``gaussian_blur`` do not: tests/robustness/test_imagenet_c_reference.py).

    python benchmarks/audit_vs_handwritten.py                  # 100 images, the full comparison
    python benchmarks/audit_vs_handwritten.py --quick          # smoke run, tiny sizes
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import noop  # noqa: E402 - write_results, utc_stamp

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
               "brightness", "contrast", "jpeg_compression")
EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
TARGET = 2.0


def write_weights(model: str, folder: str) -> str:
    """``folder/<model>-random.pt``: the torchvision architecture's state dict, seeded."""
    import torch
    import torchvision

    path = os.path.join(folder, f"{model}-random.pt")
    if not os.path.exists(path):
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(model, weights=None).state_dict(), path)
    return path


def handwritten(corpus: str, model: str, weights: str, args) -> dict:
    """The one-process audit, as a user writes it; returns its timers (seconds)."""
    import pyarrow.dataset as pads
    import torch
    import torchattacks
    import torchvision
    from PIL import Image
    from torchvision import transforms

    from ironsight.cluster.models.registry import get_model_info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation
        from imagecorruptions import corrupt

    t = {"decode": 0.0, "corrupt": 0.0, "predict": 0.0, "attack": 0.0}
    start = time.perf_counter()
    net = torchvision.models.get_model(model, weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    pre = get_model_info(model).preprocess  # what the model's card says: the same on both sides
    net = torch.nn.Sequential(transforms.Normalize(pre.mean, pre.std), net).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    mode = transforms.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else transforms.InterpolationMode.BILINEAR
    resize = (transforms.Compose([transforms.Resize(pre.resize, interpolation=mode), transforms.CenterCrop(pre.crop)])
              if pre.resize else transforms.Resize((pre.crop, pre.crop), interpolation=mode))
    table = pads.dataset(corpus, format="parquet").to_table(columns=["image", "label"])

    s = time.perf_counter()
    images = np.stack([np.asarray(resize(Image.open(io.BytesIO(b)).convert("RGB")))
                       for b in table.column("image").to_pylist()])  # (N, H, W, 3) uint8
    labels = torch.tensor(table.column("label").to_pylist())
    t["decode"] += time.perf_counter() - s

    def predict(x: torch.Tensor) -> np.ndarray:
        s = time.perf_counter()
        with torch.inference_mode():
            out = np.concatenate([net(c).argmax(1).numpy() for c in x.split(args.batch_size)])
        t["predict"] += time.perf_counter() - s
        return out

    def tensor(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)

    correct = {"clean": int((predict(tensor(images)) == labels.numpy()).sum())}
    for name in args.corruptions:
        for severity in args.severities:
            s = time.perf_counter()
            variant = np.stack([corrupt(img, corruption_name=name, severity=severity) for img in images])
            t["corrupt"] += time.perf_counter() - s
            correct[f"{name}/{severity}"] = int((predict(tensor(variant.astype(np.uint8))) == labels.numpy()).sum())
    x = tensor(images)
    for attack in ("fgsm", "pgd"):
        for eps in args.eps:
            s = time.perf_counter()
            atk = (torchattacks.FGSM(net, eps=eps) if attack == "fgsm" else
                   torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / args.pgd_steps, steps=args.pgd_steps,
                                    random_start=True))
            adv = torch.cat([atk(xb, yb) for xb, yb in zip(x.split(args.batch_size), labels.split(args.batch_size),
                                                          strict=True)])
            t["attack"] += time.perf_counter() - s
            correct[f"{attack}/{eps:.4f}"] = int((predict(adv) == labels.numpy()).sum())
    t["wall"] = time.perf_counter() - start
    return {"seconds": t, "predictions": len(correct) * len(images), "crop": pre.crop}


def ironsight_audit(corpus: str, out: str, model: str, weights: str, args) -> dict:
    """``ironsight audit`` of the same variants on an embedded Ray, and its corruption step
    alone (``corrupt_batch`` on the decoded blocks, in this process)."""
    import ray
    import torch

    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, plan_audit, run_audit
    from ironsight.jobs.variants import decode_eval_rows
    from ironsight.robustness.conditions.batch import corrupt_batch
    from ironsight.robustness.suites import AttackSpec, Suite

    suite = Suite(name="handwritten", conditions=tuple(args.corruptions), severities=tuple(args.severities),
                  attacks=(AttackSpec("fgsm", tuple(args.eps)), AttackSpec("pgd", tuple(args.eps), steps=args.pgd_steps)))
    shutil.rmtree(out, ignore_errors=True)
    cfg = AuditConfig(input=corpus, output=out, source=ModelSource(name=model, weights=weights), suite=suite,
                      progress=False, batch_size=args.batch_size, activation_maps=False)
    start = time.perf_counter()
    with connect(None):
        ray_start = time.perf_counter() - start
        cpus = int(ray.cluster_resources().get("CPU", 0))
        result = run_audit(cfg)
    wall = time.perf_counter() - start

    # the corruption step alone, as the actors run it: corrupt_batch on each decoded block
    prepared = plan_audit(AuditConfig(input=corpus, output=out + "-plan", source=cfg.source, suite=suite))
    shutil.rmtree(out + "-plan", ignore_errors=True)
    s = time.perf_counter()
    blocks = [b for shard in prepared.shards for b in decode_eval_rows(
        {"shard": np.array([shard.index])}, plan=prepared.corpus, preprocess=prepared.model.info.preprocess,
        limits=prepared.limits, block_rows=args.batch_size)]
    decode_s = time.perf_counter() - s
    threads = torch.get_num_threads()
    s, cpu = time.perf_counter(), time.process_time()
    for b in blocks:
        x = torch.from_numpy(b["image"]).permute(0, 3, 1, 2).float().div_(255.0)
        keys = [str(k) for k in b["id"]]
        for name in suite.conditions:
            for _ in corrupt_batch(name, x, suite.severities, seed=0, keys=keys, threads=threads):
                pass
    corrupt_s, corrupt_cpu = time.perf_counter() - s, time.process_time() - cpu
    return {"seconds": {"ray_start": ray_start, "run_audit": result.wall_s, "wall": wall, "decode": decode_s,
                        "corrupt": corrupt_s, "corrupt_cpu": corrupt_cpu},
            "predictions": result.rows, "ray_cpus": cpus, "corrupt_threads": threads}


def render(r: dict) -> str:
    h, i = r["handwritten"], r["ironsight"]
    lines = [
        f"# Audit: handwritten (imagecorruptions + torchattacks) vs ironsight audit ({r['stamp']})",
        "",
        f"{r['images']} images ({r['source_px']} px JPEGs, {r['crop']} px to the model), {r['model']} "
        f"(random weights), {len(r['corruptions'])} corruptions x {len(r['severities'])} severities + "
        f"FGSM and PGD-{r['pgd_steps']} at {len(r['eps'])} eps = {r['variants']} variants; "
        f"{'quick (smoke) run' if r['quick'] else 'full run'}.",
        "",
        "| side | wall s | variants/s | corruption s | corruption share |",
        "|------|-------:|-----------:|-------------:|-----------------:|",
        f"| handwritten (one process) | {h['seconds']['wall']:.1f} | {h['variants_per_s']:.1f} | "
        f"{h['seconds']['corrupt']:.1f} | {h['corruption_share']:.0%} of its wall |",
        f"| ironsight audit (Ray start + run_audit) | {i['seconds']['wall']:.1f} | {i['variants_per_s']:.1f} | "
        f"{i['seconds']['corrupt']:.1f} ({i['corrupt_threads']} threads) | {i['corruption_share_of_wall']:.0%} of wall, "
        f"{i['corruption_share_of_cpu']:.0%} of {i['ray_cpus']} cores x wall |",
        "",
        f"ironsight / handwritten: **{r['ratio']:.2f}x** (target >= {TARGET:.0f}x: "
        f"{'met' if r['ratio'] >= TARGET else 'not met'}).",
        "",
        f"Handwritten timers: decode {h['seconds']['decode']:.1f} s, corruption {h['seconds']['corrupt']:.1f} s, "
        f"prediction {h['seconds']['predict']:.1f} s, attacks {h['seconds']['attack']:.1f} s. Ironsight: Ray start "
        f"{i['seconds']['ray_start']:.1f} s, run_audit {i['seconds']['run_audit']:.1f} s (reports included); its "
        f"decode alone {i['seconds']['decode']:.1f} s, its corruption step (corrupt_batch on the decoded blocks, "
        f"CPU tensors) {i['seconds']['corrupt']:.1f} s on {i['corrupt_threads']} threads "
        f"({i['seconds']['corrupt_cpu']:.1f} s of CPU).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, help="default 100 (--quick: 4)")
    ap.add_argument("--model", default="mobilenet_v3_small", help="a torchvision architecture name")
    ap.add_argument("--source-px", type=int, default=224, help="side of the synthetic JPEGs")
    ap.add_argument("--corruptions", nargs="+", help=f"default {' '.join(CORRUPTIONS)} (--quick: the first 2)")
    ap.add_argument("--severities", nargs="+", type=int, help="default 1 2 3 4 5 (--quick: 1 2)")
    ap.add_argument("--eps", nargs="+", type=float, help="pixel units; default 1/255 2/255 4/255 8/255 "
                    "(--quick: 1/255)")
    ap.add_argument("--pgd-steps", type=int, help="default 10 (--quick: 2)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="smoke run at tiny sizes (its rates are start-up)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-audit-vs-handwritten"))
    ap.add_argument("--results", default=noop.RESULTS, help="where audit-vs-handwritten-<UTC>.json/.md go")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results files")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"images": 4 if quick else 100, "corruptions": list(CORRUPTIONS[:2] if quick else CORRUPTIONS),
                "severities": [1, 2] if quick else [1, 2, 3, 4, 5],
                "eps": list(EPSILONS[:1] if quick else EPSILONS), "pgd_steps": 2 if quick else 10}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from ironsight.cluster import synthetic

    load_at_start = os.getloadavg()[0]
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, f"eval-{args.images}-{args.source_px}px")
    if not os.path.isdir(corpus):
        synthetic.write_corpus(corpus, args.images, seed=2, rows_per_file=500, row_group_size=250, size=args.source_px)
    weights = write_weights(args.model, args.workdir)
    variants = args.images * (1 + len(args.corruptions) * len(args.severities) + 2 * len(args.eps))

    hand = handwritten(corpus, args.model, weights, args)
    iron = ironsight_audit(corpus, os.path.join(args.workdir, "out"), args.model, weights, args)
    for side in (hand, iron):
        assert side["predictions"] == variants, (side["predictions"], variants)  # same work on both sides
        side["variants_per_s"] = variants / side["seconds"]["wall"]
    hand["corruption_share"] = hand["seconds"]["corrupt"] / hand["seconds"]["wall"]
    iron["corruption_share_of_wall"] = iron["seconds"]["corrupt"] / iron["seconds"]["wall"]
    iron["corruption_share_of_cpu"] = iron["seconds"]["corrupt_cpu"] / (iron["seconds"]["wall"] * max(1, iron["ray_cpus"]))
    result = {
        "stamp": noop.utc_stamp(), "quick": args.quick, "images": args.images, "model": args.model,
        "source_px": args.source_px, "crop": hand["crop"], "corruptions": list(args.corruptions),
        "severities": list(args.severities), "eps": list(args.eps), "pgd_steps": args.pgd_steps,
        "batch_size": args.batch_size, "variants": variants, "handwritten": hand, "ironsight": iron,
        "ratio": iron["variants_per_s"] / hand["variants_per_s"], "target": TARGET,
        "load_1min_at_start": round(load_at_start, 2),
    }
    text = render(result)
    print(text)
    if not args.no_write:
        result["files"] = noop.write_results("audit-vs-handwritten", result, text, folder=args.results,
                                             stamp=result["stamp"] + ("-quick" if quick else ""))
    return result


if __name__ == "__main__":
    main()
