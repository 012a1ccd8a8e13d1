"""GPU-pinned predictors: the stateful stage of every Ray Data pipeline Ironsight runs.

A :class:`Predictor` is a callable class for ``Dataset.map_batches``: Ray builds one per actor,
the model is loaded once in ``__init__``, and each call maps a batch of decoded uint8 images to
top-k labels. With ``num_gpus=1`` Ray pins the actor to one GPU (``CUDA_VISIBLE_DEVICES``), so
``cuda`` inside the actor is that GPU. On CUDA the batch is copied from pinned memory without
blocking, converted to float on the device (uint8 crosses the bus: 4x fewer bytes), run in
channels-last under autocast; on CPU it runs in float32 with threads sized to the actor's CPUs.

Batch in (``dict[str, np.ndarray]``): ``image`` (N, H, W, 3) uint8, ``error`` (N,) object
(None or ``reason: detail``), plus pass-through columns (``id``, ``shard``, ``row``...).
Batch out: the pass-through columns, ``label`` (N,) int64 (-1 on error), ``score`` (N,) float32,
``topk_labels`` (N, k) int64, ``topk_scores`` (N, k) float32, ``error``, and ``worker``
(``pid:gpu_ids``) so a run can tell which actor did what.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ironsight.cluster.decode import as_error

if TYPE_CHECKING:
    from ironsight.cluster.models import ModelSource

__all__ = ["Predictor", "as_error", "autocast_dtype", "check_device", "pick_device"]


def pick_device(prefer: str = "auto") -> str:
    """``cuda`` when asked or when this process can see a GPU, else ``cpu``."""
    import torch

    if prefer == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if prefer == "cuda":
        raise RuntimeError("a CUDA device was requested but torch sees none in this process")
    return "cpu"


def check_device(device: str, address: str | None) -> None:
    """Refuse ``--device cuda`` on a machine without CUDA when the job would start its own Ray.

    Called before Ray starts, and before the model's heavy imports (by the CLI, for classify
    and audit; this module imports torch only when asked): with no ``--address`` and
    no cluster to join (``RAY_ADDRESS``, a local ``ray start``) the embedded Ray gets exactly
    this machine's GPUs, so torch not seeing one here means the job cannot run. A job that
    joins a cluster is checked against the cluster's GPUs once connected
    (``ironsight.cluster.pipeline.plan_resources``): its driver may well run on a CPU-only head node.

    Raises:
        InvalidInput: ``device == "cuda"``, no cluster to join, and ``torch.cuda.is_available()``
            is false.
    """
    if device != "cuda" or address is not None:
        return
    from ironsight.cluster.errors import InvalidInput
    from ironsight.cluster.raycluster import _starts_a_new_ray

    if not _starts_a_new_ray():
        return
    import torch

    if not torch.cuda.is_available():
        raise InvalidInput(
            "--device cuda: torch sees no CUDA GPU on this machine, and without --address the "
            "job runs here. Drop --device (auto uses a GPU when there is one, else the CPU), "
            "run on a machine with a GPU, or submit to a cluster with GPUs "
            "(--address ray://HEAD:10001, or `ironsight submit`)"
        )


def autocast_dtype(device: str):
    """bf16 where the GPU supports it (no loss scaling, same range as fp32), else fp16."""
    import torch

    if device != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Predictor:
    """Top-k classification of uint8 image batches; one instance per Ray actor.

    Args:
        source: how to load the model (validated by the driver before the job starts).
        top_k: how many classes to return per image.
        device: ``auto`` (GPU if the actor has one), ``cuda`` or ``cpu``.
        cpu_threads: torch intra-op threads on CPU; defaults to the CPUs Ray gave the actor.
        torch_compile: wrap the model in ``torch.compile`` (compiled on the first batch, and
            again for a new batch shape); opt-in: see ``benchmarks/torch_compile.py``.
        passthrough: columns copied from input to output unchanged.
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        top_k: int = 5,
        device: str = "auto",
        cpu_threads: int | None = None,
        passthrough: tuple[str, ...] = ("id", "shard", "row"),
        torch_compile: bool = False,
    ) -> None:
        import torch

        self.device = pick_device(device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, cpu_threads or _ray_cpus() or 1))
        loaded = source.load(self.device)
        self.model = loaded.module.to(self.device).eval()
        self.num_classes = loaded.info.num_classes
        self.top_k = min(top_k, self.num_classes)
        self.passthrough = passthrough
        self.amp_dtype = autocast_dtype(self.device)
        if self.device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        if torch_compile:
            self.model = torch.compile(self.model)
        self.worker = f"{os.getpid()}:{_gpu_ids()}"

    def logits(self, images: np.ndarray):
        """(N, H, W, 3) uint8 -> (N, num_classes) float32 logits on the CPU."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images))  # (N, H, W, 3) uint8
        if self.device == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W) float32 in [0, 1]
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float().cpu()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        images = batch["image"]
        n = len(images)
        errors = np.array([as_error(e) for e in batch["error"]], dtype=object)
        ok = np.array([e is None for e in errors], dtype=bool)
        labels = np.full(n, -1, np.int64)
        scores = np.zeros(n, np.float32)
        topk_labels = np.full((n, self.top_k), -1, np.int64)
        topk_scores = np.zeros((n, self.top_k), np.float32)
        if ok.any():
            try:
                probs = torch.softmax(self.logits(images[ok]), dim=1)  # (M, C) float32
                top_p, top_i = probs.topk(self.top_k, dim=1)
                topk_labels[ok] = top_i.numpy()
                topk_scores[ok] = top_p.numpy()
                labels[ok] = topk_labels[ok, 0]
                scores[ok] = topk_scores[ok, 0]
            except RuntimeError as exc:  # e.g. CUDA OOM on one batch: rows fail, the job goes on
                msg = f"inference_failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                errors = np.array([e if e is not None else msg for e in errors], dtype=object)
        out: dict[str, Any] = {k: batch[k] for k in self.passthrough if k in batch}
        out.update(
            label=labels,
            score=scores,
            topk_labels=topk_labels,
            topk_scores=topk_scores,
            error=errors,
            worker=np.full(n, self.worker, dtype=object),
        )
        return out


def _ray_cpus() -> int | None:
    try:
        import ray

        if ray.is_initialized():
            res = ray.get_runtime_context().get_assigned_resources()
            return int(res.get("CPU", 0)) or None
    except Exception:  # noqa: BLE001 - outside an actor there is nothing to read
        return None
    return None


def _gpu_ids() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ",".join(str(g) for g in ray.get_gpu_ids()) or "-"
    except Exception:  # noqa: BLE001
        pass
    return "-"
