"""`classify` on a GPU against the model alone on the same GPU, with GPU utilisation.

Issue 7's GPU row: ``ironsight classify --device cuda`` images/s over the model alone on the
GPU (pre-decoded tensors already on the device: the ceiling) should be at least 0.8x, and the
GPU's utilisation while classify runs is reported (``nvidia-smi --query-gpu=utilization.gpu``
sampled every 0.5 s on the GPU the actor holds).

Both sides run the model the way the predictor actor does: ``channels_last``, autocast to
bf16 (fp16 where bf16 is unsupported), ``torch.inference_mode``, batch ``--batch-size``.
The corpus is synthetic JPEGs of ``--image-size`` px, decoded and resized to the model's
input by the decode tasks on the CPU cores.

Without CUDA nothing is measured and the result says so (``{"measured": False, "why": ...}``).

    python benchmarks/gpu_throughput.py --images 20000 --model resnet50 --image-size 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


class GpuSampler:
    """Samples ``utilization.gpu`` (%) of every visible GPU with nvidia-smi in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[list[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
                self.samples.append([int(v) for v in out.split()])
            except (OSError, subprocess.SubprocessError, ValueError):
                return  # no nvidia-smi: utilisation stays unreported
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def busiest(self) -> dict | None:
        """Mean and median utilisation of the GPU that was busiest (the actor's)."""
        if not self.samples:
            return None
        per_gpu = list(zip(*self.samples, strict=False))
        gpu = max(range(len(per_gpu)), key=lambda i: sum(per_gpu[i]))
        values = per_gpu[gpu]
        return {"gpu": gpu, "mean": statistics.fmean(values), "median": statistics.median(values),
                "samples": len(values)}


def model_alone(model_name: str, batch: int, seconds: float) -> float:
    """Images/s of the model on pre-decoded tensors on the GPU, as the predictor runs it."""
    import torch

    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.predictor import autocast_dtype

    loaded = ModelSource(name=model_name, random_weights=True).load("cuda")
    net = loaded.module.to("cuda").eval().to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    x = torch.rand(batch, *loaded.info.preprocess.input_shape, device="cuda")  # (B, 3, H, W) in [0, 1]
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype("cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for _ in range(5):  # cudnn autotuning, allocator warm-up
            net(x)
        torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            n += batch
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--image-size", type=int, default=256, help="side of the generated JPEGs (default: 256)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=20, help="how long the model-alone loop runs")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ironsight-gpu-bench"))
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("\nGPU row: not measured: no GPU (torch.cuda.is_available() is False)")
        return {"measured": False, "why": "no GPU"}

    from ironsight.cluster import synthetic
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.pipeline import ClassifyConfig, run_classify
    from ironsight.cluster.raycluster import connect

    corpus = os.path.join(args.workdir, f"corpus-{args.images}-{args.image_size}")
    if not os.path.isdir(corpus):
        synthetic.write_corpus(corpus, args.images, seed=11, rows_per_file=2000, row_group_size=500,
                               size=args.image_size)
    alone = model_alone(args.model, args.batch_size, args.seconds)
    torch.cuda.empty_cache()
    out = os.path.join(args.workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    with connect(None):
        with GpuSampler() as sampler:
            start = time.perf_counter()
            summary = run_classify(ClassifyConfig(
                input=corpus, output=out, source=ModelSource(name=args.model, random_weights=True),
                batch_size=args.batch_size, device="cuda", progress=False))
            wall = time.perf_counter() - start
    rate = summary.rows / wall
    util = sampler.busiest()
    result = {"measured": True, "device": torch.cuda.get_device_name(0), "images": summary.rows,
              "model": args.model, "classify_images_per_s": rate, "model_alone_images_per_s": alone,
              "ratio": rate / alone, "gpu_util": util, "cpus": os.cpu_count()}
    print(f"\nGPU: {result['device']}, {os.cpu_count()} CPUs, model {args.model}, batch {args.batch_size}, "
          f"{summary.rows} images of {args.image_size}px")
    print(f"model alone on the GPU      {alone:>10.1f} images/s")
    print(f"ironsight classify (cuda)   {rate:>10.1f} images/s  ({wall:.1f}s, start-up included)")
    print(f"classify / model alone = {result['ratio']:.2f}x (target >= 0.8x)")
    if util:
        print(f"GPU utilisation while classify ran: mean {util['mean']:.0f}%, median {util['median']:.0f}% "
              f"({util['samples']} samples of nvidia-smi, GPU {util['gpu']})")
    else:
        print("GPU utilisation: not reported (nvidia-smi unavailable)")
    return result


if __name__ == "__main__":
    main()
