"""GPU-pinned predictors: the stateful stage of every Ray Data pipeline Ironsight runs.

A :class:`Predictor` is a callable class for ``Dataset.map_batches``: Ray builds one per actor,
the model is loaded once in ``__init__``, and each call maps a batch of decoded uint8 images to
top-k labels. With ``num_gpus=1`` Ray pins the actor to one GPU (``CUDA_VISIBLE_DEVICES``), so
``cuda`` inside the actor is that GPU. On CUDA the batch is copied from pinned memory without
blocking, converted to float on the device (uint8 crosses the bus: 4x fewer bytes), run in
channels-last under autocast; on CPU it runs in float32, channels-last too (oneDNN's fast
layout: 1.4-1.9x the NCHW forward of mobilenet_v3_small and resnet50 at 224 px on this
project's 2-core machine), with threads sized to the actor's CPUs.

What happens when the GPU runs out of memory, and where host memory comes from:

| situation                                   | what the predictor does                                  |
|---------------------------------------------|----------------------------------------------------------|
| ``torch.cuda.OutOfMemoryError`` on a batch  | frees the cache, splits the batch in halves and retries each, recursively; later batches start at the size that fitted |
| a single image still runs out of memory     | that row only gets ``inference_failed: OutOfMemoryError: ...``; the rest are labelled |
| any other ``RuntimeError`` in the model     | every decoded row of the batch gets ``inference_failed: ...``; the job goes on |
| a batch on CUDA                             | copied through ONE page-locked host buffer per actor (:class:`HostStaging`), grown when a batch is larger, never allocated per batch |
| a float tensor already on the device (an audit's corrupted variant, :meth:`Predictor.predict`) | predicted as it is, split on OOM the same way (chunks are views on the device) |

Batch in (``dict[str, np.ndarray]``): ``image`` (N, H, W, 3) uint8, ``error`` (N,) object
(None or ``reason: detail``), plus pass-through columns (``id``, ``shard``, ``row``...).
Batch out: the pass-through columns, ``label`` (N,) int64 (-1 on error), ``score`` (N,) float32,
``topk_labels`` (N, k) int64, ``topk_scores`` (N, k) float32, ``error``, and ``worker``
(``<node>/<pid>/<gpu_ids>``, see ``ironsight.cluster.decode.worker_identity``) so a run can
tell which actor on which node did what.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ironsight.cluster.decode import as_error, worker_identity

if TYPE_CHECKING:
    from ironsight.cluster.corpus import CorpusPlan
    from ironsight.cluster.models import LoadedModel, ModelSource

__all__ = ["CostProfile", "HostStaging", "Predictor", "as_error", "autocast_dtype", "check_device",
           "fused_for_inference", "pick_device"]

log = logging.getLogger("ironsight")


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
    (``ironsight.cluster.engine.plan_resources``): its driver may well run on a CPU-only head node.

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


def _pinned_bytes(n: int):
    import torch

    return torch.empty(n, dtype=torch.uint8, pin_memory=True)


class HostStaging:
    """One page-locked (pinned) host buffer, reused for every batch an actor copies to the GPU.

    ``cudaHostAlloc`` is slow (it locks pages with the kernel: milliseconds per batch at 224 px)
    and pinned memory is a scarce, unswappable resource, so the buffer is allocated on the
    first batch, grown (to the larger size, once) when a batch needs more bytes, and otherwise
    reused. ``stage`` returns a view of it: a non-blocking copy from that view must finish
    before the next ``stage`` overwrites it, which :meth:`Predictor.logits` guarantees by
    bringing the logits back to the CPU (a synchronising copy) before it returns.

    Args:
        alloc: ``nbytes -> 1-D uint8 tensor``; page-locked by default (needs CUDA). Tests pass
            an ordinary allocator to count allocations on a CPU-only machine.

    >>> import torch
    >>> staging = HostStaging(alloc=lambda n: torch.empty(n, dtype=torch.uint8))
    >>> staging.stage(np.zeros((4, 8, 8, 3), np.uint8)).shape, staging.allocations
    (torch.Size([4, 8, 8, 3]), 1)
    >>> _ = staging.stage(np.ones((2, 8, 8, 3), np.uint8)); staging.allocations, staging.capacity
    (1, 768)
    """

    def __init__(self, alloc=None) -> None:
        self._alloc = alloc or _pinned_bytes
        self._buf = None
        self.allocations = 0

    @property
    def capacity(self) -> int:
        return 0 if self._buf is None else int(self._buf.numel())

    def stage(self, images: np.ndarray):
        """Copy ``images`` (any shape, uint8) into the buffer; a tensor view of that shape."""
        import torch

        src = torch.from_numpy(np.ascontiguousarray(images))
        n = src.numel()
        if n > self.capacity:
            self._buf = None  # drop the old buffer before locking a larger one
            self._buf = self._alloc(n)
            self.allocations += 1
        view = self._buf[:n].view(src.shape)
        view.copy_(src)
        return view


def fused_for_inference(model):
    """``model`` (in eval mode) with each batch-norm folded into the convolution or linear layer
    before it (``torch.fx.experimental.optimization.fuse``: same function up to float rounding,
    input gradients included); the model itself when it cannot be traced (dynamic control flow,
    a TorchScript or exported program), which then runs unfused.

    An eval-mode batch-norm is a per-channel scale and shift; left apart it is a second pass
    over every activation. Measured on this project's 2-core machine, channels-last, forward
    per image: mobilenet_v3_small at 224 px 3.8 -> 2.2 ms, resnet50 42.6 -> 39.1 ms, demo_cnn
    at 64 px 0.20 -> 0.17 ms.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(model)  # a traced copy; the original's parameters are left as they are
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many kinds on untraceable code
        log.debug("model not fused (%s: %s): it runs as loaded", type(exc).__name__, exc)
        return model
    return fused.eval()


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


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
        self.threads = torch.get_num_threads()  # the actor's CPU threads (its CPU-side work too)
        loaded = source.load(self.device)
        self.model = fused_for_inference(loaded.module.to(self.device).eval())
        self.num_classes = loaded.info.num_classes
        self.top_k = min(top_k, self.num_classes)
        self.passthrough = passthrough
        self.amp_dtype = autocast_dtype(self.device)
        self.model = self.model.to(memory_format=torch.channels_last)  # 4-D weights only
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        if torch_compile:
            self.model = torch.compile(self.model)
        self.staging = HostStaging()  # allocates nothing until the first CUDA batch
        # Largest batch the model ran without running out of GPU memory after an OOM (None:
        # no OOM yet): later batches go in chunks of this size instead of failing again first.
        self.max_batch: int | None = None
        self.worker = f"{worker_identity()}/{_gpu_ids()}"  # node/pid/gpus: where rows were predicted

    def to_device(self, images: np.ndarray):
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] on the actor's device.

        uint8 crosses the bus (4x fewer bytes than float), through the actor's one pinned
        buffer on CUDA (:class:`HostStaging`); the copy is finished by the time a prediction
        returns (its logits come back to the CPU), before the next ``to_device`` reuses the
        buffer.
        """
        import torch

        if self.device == "cuda":  # through the actor's one pinned buffer (HostStaging)
            x = self.staging.stage(images).to(self.device, non_blocking=True)  # (N, H, W, 3) uint8
        else:
            x = torch.from_numpy(np.ascontiguousarray(images))  # (N, H, W, 3) uint8
        # (N, 3, H, W) float32 in [0, 1], channels-last (the permuted view's layout, made dense)
        return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def forward(self, x):
        """(N, 3, H, W) float32 in [0, 1] on the device -> (N, num_classes) float32 logits on
        the CPU (channels-last; under autocast on CUDA)."""
        import torch

        x = x.contiguous(memory_format=torch.channels_last)  # a no-op for to_device's batches
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float().cpu()

    def logits(self, images: np.ndarray):
        """(N, H, W, 3) uint8 -> (N, num_classes) float32 logits on the CPU."""
        return self.forward(self.to_device(images))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.array([as_error(e) for e in batch["error"]], dtype=object)
        ok = np.array([e is None for e in errors], dtype=bool)
        out: dict[str, Any] = {k: batch[k] for k in self.passthrough if k in batch}
        out.update(self.predict(batch["image"][ok] if ok.any() else None, errors))
        out["worker"] = np.full(len(errors), self.worker, dtype=object)
        return out

    def predict(self, inputs, errors: np.ndarray) -> dict[str, np.ndarray]:
        """Top-k of the rows whose ``errors`` entry is None; the other rows keep their error.

        Args:
            inputs: those rows' images: (M, H, W, 3) uint8, or (M, 3, H, W) float32 in [0, 1]
                already on the device (:meth:`to_device`, a corrupted variant); None when M is 0.
            errors: (N,) object, None or ``reason: detail`` per row.

        Returns:
            ``label`` (N,) int64 (-1 on error), ``score`` (N,) float32, ``topk_labels`` (N, k)
            int64, ``topk_scores`` (N, k) float32 and ``error`` (N,) object: a CUDA OOM is split
            (:meth:`top_k_split`), any other ``RuntimeError`` fails the predicted rows.
        """
        n = len(errors)
        errors = np.array(errors, dtype=object)
        ok = np.array([e is None for e in errors], dtype=bool)
        labels = np.full(n, -1, np.int64)
        scores = np.zeros(n, np.float32)
        topk_labels = np.full((n, self.top_k), -1, np.int64)
        topk_scores = np.zeros((n, self.top_k), np.float32)
        if ok.any():
            try:
                top_i, top_p, failed = self.top_k_split(inputs)
                topk_labels[ok] = top_i
                topk_scores[ok] = top_p
                labels[ok] = topk_labels[ok, 0]
                scores[ok] = topk_scores[ok, 0]
                bad = np.array([f is not None for f in failed], bool)  # single images still OOM
                errors[np.flatnonzero(ok)[bad]] = failed[bad]
            except RuntimeError as exc:  # not an OOM: rows fail, the job goes on
                msg = _failure(exc)
                errors = np.array([e if e is not None else msg for e in errors], dtype=object)
        return {"label": labels, "score": scores, "topk_labels": topk_labels, "topk_scores": topk_scores,
                "error": errors}

    def top_k_split(self, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of ``images``, splitting on CUDA out-of-memory: (M, H, W, 3) uint8, or a
        (M, 3, H, W) float32 tensor in [0, 1] on the device (its chunks are views: nothing is
        copied back to the host to split it).

        Runs in chunks of :attr:`max_batch` once an OOM has set it. A chunk that runs out of
        GPU memory is split in halves, each retried (recursively); only a single image that
        still does not fit becomes an error, so one OOM never fails a whole batch.

        Returns:
            (M, k) int64 labels (-1 where failed), (M, k) float32 scores, (M,) object errors
            (None or ``inference_failed: OutOfMemoryError: ...``).
        """
        m = len(images)
        labels = np.full((m, self.top_k), -1, np.int64)
        scores = np.zeros((m, self.top_k), np.float32)
        errors = np.full(m, None, dtype=object)
        step = self.max_batch or m
        for start in range(0, m, step):
            self._top_k_into(images, start, min(m, start + step), labels, scores, errors)
        return labels, scores, errors

    def _top_k_into(self, images, lo: int, hi: int, labels, scores, errors) -> None:
        import torch

        try:
            chunk = images[lo:hi]
            logits = self.logits(chunk) if isinstance(chunk, np.ndarray) else self.forward(chunk)
            probs = torch.softmax(logits, dim=1)  # (n, C) float32
            top_p, top_i = probs.topk(self.top_k, dim=1)
            labels[lo:hi], scores[lo:hi] = top_i.numpy(), top_p.numpy()
            return
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            msg = _failure(exc)
        # Out of the except block: the traceback no longer holds the failed batch's tensors.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if hi - lo == 1:
            errors[lo] = msg
            return
        mid = lo + (hi - lo) // 2
        self.max_batch = min(self.max_batch or hi - lo, (hi - lo + 1) // 2)
        self._top_k_into(images, lo, mid, labels, scores, errors)
        self._top_k_into(images, mid, hi, labels, scores, errors)


def _failure(exc: BaseException) -> str:
    """The error-row text of an inference failure: ``inference_failed: Type: first line``."""
    return f"inference_failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


@dataclass(frozen=True)
class CostProfile:
    """What one image costs this job, measured in the driver before the actors start.

    Attributes:
        decode_ms: CPU milliseconds to read and decode one corpus image to the model's input
            (one core; a sample of the first shard).
        model_ms: milliseconds of the model per image on ONE torch thread (uint8 batch in,
            logits out, as :meth:`Predictor.logits` runs it).
        model_ms_2: the same on TWO threads (None on a 1-core machine). ``model_ms /
            (2 * model_ms_2)`` is the second thread's efficiency: near 1 on an idle machine
            for a large model, far lower when other work holds the cores (torch's threads
            wait on each other).
    """

    decode_ms: float
    model_ms: float
    model_ms_2: float | None = None

    @property
    def decode_share(self) -> float:
        """Decode's fraction of the CPU work per image (1 thread each)."""
        return self.decode_ms / (self.decode_ms + self.model_ms)

    @property
    def two_thread_efficiency(self) -> float | None:
        return None if self.model_ms_2 is None else self.model_ms / (2 * self.model_ms_2)


def measure_cost(model: LoadedModel, plan: CorpusPlan, *, max_pixels: int, images: int = 16,
                 budget_s: float = 1.5) -> CostProfile:
    """Calibrate :class:`CostProfile` in the driver: decode ``images`` rows of the first shard,
    and time the model on a batch of that many (crop x crop) images on 1 and on 2 threads.

    Costs about ``budget_s`` of one core at most per thread count (fewer repeats for a slow
    model: one batch of 16 ResNet-50 images is ~1 s), plus one decode sample. The torch
    thread count of this process is restored afterwards. It measures the driver's machine, at
    the moment the job starts: on a cluster whose worker nodes differ from the driver's (or
    whose load does), the plan is only as good as that likeness; ``--actors`` overrides it.
    """
    import torch

    from ironsight.cluster.decode import decode_rows
    from ironsight.cluster.reader import iter_shard

    pre = model.info.preprocess
    batch = next(iter_shard(plan, plan.shards[0], batch_rows=images), None) if plan.shards else None
    blobs = batch["image"] if batch else []
    if blobs:  # warm-up: the first decode in a process loads Pillow's plugins (~2 ms an image)
        decode_rows(blobs[:1], batch["error"][:1], pre, max_pixels)
    cpu = time.process_time()
    if blobs:
        decode_rows(blobs, batch["error"], pre, max_pixels)
    decode_ms = (time.process_time() - cpu) * 1e3 / max(1, len(blobs))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (images, 3, pre.crop, pre.crop), dtype=np.uint8))
    x = x.contiguous(memory_format=torch.channels_last)  # as the actors run it (Predictor)
    module = fused_for_inference(model.module.eval()).to(memory_format=torch.channels_last)

    def per_image_ms(threads: int) -> float:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            module(x[:2].float().div_(255.0))  # warm-up: allocator, kernels for this shape
            best, spent = float("inf"), 0.0
            while spent < budget_s / 2 or best == float("inf"):
                t = time.perf_counter()
                module(x.float().div_(255.0))
                took = time.perf_counter() - t
                best, spent = min(best, took), spent + took
                if spent >= budget_s / 2:
                    break
        return best * 1e3 / images

    before = torch.get_num_threads()
    try:
        one = per_image_ms(1)
        two = per_image_ms(2) if (os.cpu_count() or 1) >= 2 else None
    finally:
        torch.set_num_threads(before)
    return CostProfile(decode_ms=decode_ms, model_ms=one, model_ms_2=two)


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
