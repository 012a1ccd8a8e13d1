"""The audit a user writes by hand in one process vs ``ironsight audit``, side by side.

Same eval set (synthetic JPEGs), same model (a torchvision architecture trained here from
scratch on other synthetic images, a few minutes the first time, cached in ``--workdir``;
``--random-weights`` for its random initialization, which gets almost no image right, so
that the attacks have nothing to do), loaded by both from a local file, same variants: every
image clean, at each corruption x severity, and under each attack x eps. Both sides' accuracies
are printed per cell: Ironsight's attacks count an image as fooled at its first misclassified
iterate and do not attack images already wrong (RobustBench's rule,
``ironsight.robustness.attack_sweep``); ``--no-early-stop`` runs them by torchattacks' rule.

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


def train_weights(model: str, folder: str, *, size: int, images: int, epochs: int) -> tuple[str, dict]:
    """``folder/<model>-synthetic-<size>px-<images>x<epochs>.pt``: the architecture trained
    from scratch on ``images`` synthetic images (split seed 1; the eval corpus is split 2),
    through the model card's resize and crop, on this machine's cores (cached: a few minutes
    the first time). An audit's attack time depends on how many images the model gets right
    and how fast they fall: a random-weights model gets ~none right, so the attacks would have
    nothing to do. Returns the path and what training measured."""
    import json

    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    from ironsight.cluster import synthetic
    from ironsight.cluster.models.registry import get_model_info

    path = os.path.join(folder, f"{model}-synthetic-{size}px-{images}x{epochs}.pt")
    meta = path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as f:
            return path, json.load(f)
    start = time.perf_counter()
    pre = get_model_info(model).preprocess
    mode = transforms.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else transforms.InterpolationMode.BILINEAR
    resize = (transforms.Compose([transforms.Resize(pre.resize, interpolation=mode), transforms.CenterCrop(pre.crop)])
              if pre.resize else transforms.Resize((pre.crop, pre.crop), interpolation=mode))
    raw, labels = synthetic.render_arrays(1, 0, images, size=size)
    x_all = torch.from_numpy(np.stack([np.asarray(resize(Image.fromarray(a))) for a in raw]))  # (N, crop, crop, 3) uint8
    y_all = torch.from_numpy(labels)
    torch.manual_seed(0)
    net = torchvision.models.get_model(model, weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1  # mobilenet_v3's 0.01 leaves the running statistics behind in a short run
    body = torch.nn.Sequential(transforms.Normalize(pre.mean, pre.std), net).to(memory_format=torch.channels_last)
    batch = 32
    opt = torch.optim.AdamW(body.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (images // batch))
    gen = torch.Generator().manual_seed(0)
    body.train()
    for _ in range(epochs):
        order = torch.randperm(images, generator=gen)
        for lo in range(0, images - batch + 1, batch):
            idx = order[lo:lo + batch]
            x = x_all[idx].permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(body(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    torch.save(net.state_dict(), path)
    info = {"train_images": images, "epochs": epochs, "train_s": round(time.perf_counter() - start, 1),
            "final_loss": round(float(loss.detach()), 4)}
    with open(meta, "w") as f:
        json.dump(info, f)
    return path, info


def cell_accuracy(correct: dict[str, int], n: int) -> dict[str, float]:
    return {k: v / n for k, v in correct.items()}


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
            correct[f"{attack}/{eps:.6f}"] = int((predict(adv) == labels.numpy()).sum())
    t["wall"] = time.perf_counter() - start
    return {"seconds": t, "predictions": len(correct) * len(images), "crop": pre.crop,
            "accuracy": cell_accuracy(correct, len(images))}


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

    rule = {} if args.early_stop else {"early_stop": False}  # (an older Ironsight has no early_stop)
    suite = Suite(name="handwritten", conditions=tuple(args.corruptions), severities=tuple(args.severities),
                  attacks=(AttackSpec("fgsm", tuple(args.eps), **rule),
                           AttackSpec("pgd", tuple(args.eps), steps=args.pgd_steps, **rule)))
    shutil.rmtree(out, ignore_errors=True)
    cfg = AuditConfig(input=corpus, output=out, source=ModelSource(name=model, weights=weights), suite=suite,
                      progress=False, batch_size=args.batch_size, activation_maps=False)
    start = time.perf_counter()
    with connect(None):
        ray_start = time.perf_counter() - start
        cpus = int(ray.cluster_resources().get("CPU", 0))
        result = run_audit(cfg)
    wall = time.perf_counter() - start
    accuracy = ironsight_accuracy(os.path.join(out, "predictions.parquet"))

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
            "predictions": result.rows, "ray_cpus": cpus, "corrupt_threads": threads, "accuracy": accuracy}


def ironsight_accuracy(predictions: str) -> dict[str, float]:
    """Accuracy per variant cell of the audit's predictions.parquet, keyed as the handwritten
    side keys them (``clean``, ``<corruption>/<severity>``, ``<attack>/<eps>``)."""
    import pyarrow.parquet as pq

    t = pq.read_table(predictions, columns=["kind", "condition", "severity", "eps", "correct"]).to_pydict()
    cells: dict[str, list[bool]] = {}
    for kind, cond, sev, eps, ok in zip(t["kind"], t["condition"], t["severity"], t["eps"], t["correct"], strict=True):
        key = "clean" if kind == "clean" else f"{cond}/{sev}" if kind == "corruption" else f"{cond}/{eps:.6f}"
        cells.setdefault(key, []).append(bool(ok))
    return {k: sum(v) / len(v) for k, v in cells.items()}


def agreement(hand: dict[str, float], iron: dict[str, float]) -> dict:
    """How far the two sides' accuracies are apart: clean, corruption cells (same definitions,
    different random draws) and attack cells (Ironsight's early stop counts an image fooled at
    its first misclassified iterate; torchattacks keeps the last)."""
    def cells(prefixes):
        return [k for k in hand if k in iron and k.split("/")[0] in prefixes]

    corr = [k for k in hand if k in iron and k != "clean" and k.split("/")[0] not in ("fgsm", "pgd")]
    diffs = [iron[k] - hand[k] for k in corr]
    return {
        "clean": (hand.get("clean"), iron.get("clean")),
        "corruption_mean": (sum(hand[k] for k in corr) / max(1, len(corr)), sum(iron[k] for k in corr) / max(1, len(corr))),
        "corruption_max_abs_diff": max((abs(d) for d in diffs), default=0.0),
        "attacks": {k: (hand[k], iron[k]) for k in cells(("fgsm", "pgd"))},
    }


def render(r: dict) -> str:
    h, i, a = r["handwritten"], r["ironsight"], r["agreement"]
    lines = [
        f"# Audit: handwritten (imagecorruptions + torchattacks) vs ironsight audit ({r['stamp']})",
        "",
        f"{r['images']} images ({r['source_px']} px JPEGs, {r['crop']} px to the model), {r['model']} "
        f"({'random weights' if r['random_weights'] else 'trained here on synthetic images'}), {len(r['corruptions'])} corruptions x {len(r['severities'])} severities + "
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
        "",
        f"Model: {r['weights']}. Accuracy, handwritten vs ironsight: clean {a['clean'][0]:.1%} vs {a['clean'][1]:.1%}; "
        f"mean over the corruption cells {a['corruption_mean'][0]:.1%} vs {a['corruption_mean'][1]:.1%} (largest "
        f"cell difference {a['corruption_max_abs_diff']:.1%}: same definitions, other random draws). Attacks "
        f"(Ironsight {'early stop: an image counts as fooled at its first misclassified iterate, wrong-clean images not attacked' if r['early_stop'] else 'early_stop false: torchattacks rule'}):",
        "",
        "| attack / eps | handwritten (torchattacks) | ironsight |",
        "|--------------|---------------------------:|----------:|",
        *(f"| {k.split('/')[0]} {float(k.split('/')[1]) * 255:.3g}/255 | {h:.1%} | {v:.1%} |" for k, (h, v) in a["attacks"].items()),
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
    ap.add_argument("--random-weights", action="store_true",
                    help="the architecture's random initialization (gets ~no image right: the attacks have no work)")
    ap.add_argument("--train-images", type=int, help="synthetic training images (default 3200; --quick: 64)")
    ap.add_argument("--train-epochs", type=int, help="default 6 (--quick: 1)")
    ap.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                    help="Ironsight's attacks with early_stop false (torchattacks' rule: every image, last iterate)")
    ap.add_argument("--quick", action="store_true", help="smoke run at tiny sizes (its rates are start-up)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-audit-vs-handwritten"))
    ap.add_argument("--results", default=noop.RESULTS, help="where audit-vs-handwritten-<UTC>.json/.md go")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results files")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"images": 4 if quick else 100, "corruptions": list(CORRUPTIONS[:2] if quick else CORRUPTIONS),
                "severities": [1, 2] if quick else [1, 2, 3, 4, 5],
                "eps": list(EPSILONS[:1] if quick else EPSILONS), "pgd_steps": 2 if quick else 10,
                "train_images": 64 if quick else 3200, "train_epochs": 1 if quick else 6}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from ironsight.cluster import synthetic

    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, f"eval-{args.images}-{args.source_px}px")
    if not os.path.isdir(corpus):
        synthetic.write_corpus(corpus, args.images, seed=2, rows_per_file=500, row_group_size=250, size=args.source_px)
    if args.random_weights:
        weights, trained = write_weights(args.model, args.workdir), None
    else:
        weights, trained = train_weights(args.model, args.workdir, size=args.source_px, images=args.train_images,
                                         epochs=args.train_epochs)
    load_at_start = os.getloadavg()[0]  # after training: the load the two sides start at
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
        "load_1min_at_start": round(load_at_start, 2), "random_weights": args.random_weights,
        "weights": os.path.basename(weights), "training": trained, "early_stop": args.early_stop,
        "agreement": agreement(hand["accuracy"], iron["accuracy"]),
    }
    text = render(result)
    print(text)
    if not args.no_write:
        result["files"] = noop.write_results("audit-vs-handwritten", result, text, folder=args.results,
                                             stamp=result["stamp"] + ("-quick" if quick else ""))
    return result


if __name__ == "__main__":
    main()
