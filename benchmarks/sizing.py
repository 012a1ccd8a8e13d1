"""Sizing a bulk-labeling run: CPU decode rate per core, hence cores per GPU, hours and GPUs.

Decode is measured here, for real, with ``ironsight.cluster.decode.decode_batch`` (what the decode tasks
run) on one core: typical archive JPEGs (q90, textured so they weigh what photos weigh) to the
224 px crop of a ``resize=256, crop=224`` model, with and without the JPEG draft mode (libjpeg's
DCT-domain downscale, used when the image is at least twice the target). The rate per core is
images per CPU-second of this process (``time.process_time``), so other load on the machine
inflates the wall time but not the figure; wall images/s are printed next to it.

The GPU side is an input, not a measurement, unless a GPU is present: ``--gpu-rate`` (images/s
one GPU sustains for the model) is labelled "assumed" in the table. With CUDA available the
script also measures the model alone on pre-decoded tensors on the GPU and adds that row.
From both: cores per GPU = GPU rate / decode rate per core; hours = images / (GPUs x min(GPU
rate, cores x decode rate)); GPU-hours = images / GPU rate.

    python benchmarks/sizing.py --images 300 --gpu-rate 2000 --gpu-rate 5000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIZES = ((500, 375), (1024, 768), (4032, 3024))  # ImageNet-typical, web-scaled, phone photo
DEFAULT_GPU_RATES = (1000.0, 3000.0, 10000.0)
CORPORA = (10_000_000, 100_000_000)


def archive_jpeg(width: int, height: int, seed: int) -> bytes:
    """A q90 JPEG of ``width`` x ``height``: a synthetic scene plus grain, photo-like in size."""
    import io

    from PIL import Image

    from ironsight.cluster import synthetic

    img, _ = synthetic.render_image(seed=seed, index=0, size=256)
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    px = np.asarray(img, np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode_rate(blobs: list[bytes], draft: bool, repeat: int) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of decode_batch on one core."""
    from ironsight.cluster import decode
    from ironsight.cluster.preprocess import Preprocess

    pre = Preprocess(resize=256, crop=224)
    saved = decode._JPEG_DRAFT
    decode._JPEG_DRAFT = draft
    try:
        decode.decode_batch(blobs[:2], pre)  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(repeat):
            _, errors = decode.decode_batch(blobs, pre)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        decode._JPEG_DRAFT = saved
    assert not any(errors), errors[:3]
    n = len(blobs) * repeat
    return n / cpu, n / wall


def gpu_model_rate(model: str, batch: int, seconds: float = 10.0) -> float | None:
    """Images/s of the model alone on pre-decoded tensors on the GPU, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    from gpu_throughput import model_alone  # benchmarks/ is on sys.path, as for run_all

    return model_alone(model, batch, seconds)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="distinct images per size (default: 200)")
    ap.add_argument("--repeat", type=int, default=2, help="passes over them (default: 2)")
    ap.add_argument("--gpu-rate", type=float, action="append", default=None,
                    help="assumed images/s one GPU sustains (repeatable; default: 1000, 3000, 10000)")
    ap.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES),
                    help="source JPEG sizes WxH, comma-separated; the first is the typical one, the last "
                    "the large one (default: %(default)s)")
    ap.add_argument("--model", default="resnet50", help="model for the GPU measurement (CUDA only)")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    gpu_rates = [(r, "assumed") for r in (args.gpu_rate or DEFAULT_GPU_RATES)]
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in sizes)
    except (ValueError, AssertionError):
        ap.error(f"--sizes {args.sizes!r}: expected WxH[,WxH...], e.g. 500x375,4032x3024")

    decode_rows = []
    for w, h in sizes:
        # at most ~200 MP of distinct sources per size (12 MP photos take a while to make),
        # decoded as many times as the small ones: same number of decodes per size
        distinct = max(4, min(args.images, 200_000_000 // (w * h)))
        blobs = [archive_jpeg(w, h, seed=i) for i in range(distinct)]
        blobs = (blobs * math.ceil(args.images / distinct))[: args.images]
        kb = sum(map(len, blobs)) / len(blobs) / 1024
        for draft in (True, False):
            if not draft and min(w, h) < 2 * 256:
                continue  # draft changes nothing below twice the target: same code path
            cpu_rate, wall_rate = decode_rate(blobs, draft, args.repeat)
            decode_rows.append({"size": f"{w}x{h}", "kb": kb, "draft": draft, "per_core": cpu_rate,
                                "wall": wall_rate})
    measured = gpu_model_rate(args.model, args.batch_size)
    if measured is not None:
        gpu_rates.insert(0, (measured, f"measured, {args.model} alone, batch {args.batch_size}"))

    print("\nCPU decode, one core, JPEG q90 -> 224 px (resize 256, crop 224), ironsight.cluster.decode.decode_batch")
    print(f"{'source':<11} {'KB':>6} {'draft':>6} {'img/s/core':>11} {'img/s wall':>11}")
    for r in decode_rows:
        print(f"{r['size']:<11} {r['kb']:>6.0f} {'on' if r['draft'] else 'off':>6} {r['per_core']:>11.0f} "
              f"{r['wall']:>11.0f}")
    typical = next(r for r in decode_rows if r["size"] == f"{sizes[0][0]}x{sizes[0][1]}")
    big = next(r for r in decode_rows if r["size"] == f"{sizes[-1][0]}x{sizes[-1][1]}" and r["draft"])

    sizing = []
    print(f"\nsizing: decode at {typical['per_core']:.0f} img/s/core ({typical['size']}), "
          f"{big['per_core']:.0f} ({big['size']}, draft on); GPU-hours assume the GPU is kept fed")
    print(f"{'GPU img/s':>10} {'':<9} {'cores/GPU':>10} {'large cores':>11} {'GPU-h 10M':>10} {'GPU-h 100M':>11}"
          f" {'GPUs 100M in 24h':>17} {'in 8h':>6}")
    for rate, how in gpu_rates:
        row = {"gpu_rate": rate, "source": how,
               "cores_per_gpu": math.ceil(rate / typical["per_core"]),
               "cores_per_gpu_large": math.ceil(rate / big["per_core"]),
               "gpu_hours": {n: n / rate / 3600 for n in CORPORA}}
        row["gpus_100m_24h"] = math.ceil(row["gpu_hours"][CORPORA[1]] / 24)
        row["gpus_100m_8h"] = math.ceil(row["gpu_hours"][CORPORA[1]] / 8)
        print(f"{rate:>10.0f} {how.split(',')[0]:<9} {row['cores_per_gpu']:>10} {row['cores_per_gpu_large']:>11} "
              f"{row['gpu_hours'][CORPORA[0]]:>10.1f} {row['gpu_hours'][CORPORA[1]]:>11.1f} "
              f"{row['gpus_100m_24h']:>17} {row['gpus_100m_8h']:>6}")
        sizing.append(row)
    return {"decode": decode_rows, "sizing": sizing, "gpu_measured": measured,
            "typical": typical["size"], "large": big["size"]}


if __name__ == "__main__":
    main()
