"""How fast and how big a model is on the device it runs on: parameters, FLOPs, latency,
throughput, peak inference memory. Pure torch; ``ironsight compare`` calls
:func:`profile_model` in one Ray actor per model, one model at a time, so no other model
disturbs the timings.

| field              | how it is measured                                                        |
|--------------------|---------------------------------------------------------------------------|
| ``params``         | ``sum(p.numel())`` over the module's parameters                           |
| ``flops_per_image``| ``torch.utils.flop_counter.FlopCounterMode``, one forward at batch 1; a   |
|                    | multiply-add counts 2 FLOPs (torch's convention), ops without a formula 0; |
|                    | None (reason in ``notes`` and the log) when counting fails or counts 0     |
| ``latency_ms_p50/p95`` | batch 1, after warm-up: median and 95th percentile of per-forward    |
|                    | wall times (``torch.cuda.synchronize`` before and after each on CUDA)     |
| ``throughput_img_s``, ``best_batch_size`` | each of ``batch_sizes``: images / second over repeated |
|                    | forwards after one warm-up; the best batch size wins                      |
| ``peak_memory_mb`` | at ``best_batch_size``, one forward; see below; MiB (2**20 bytes)         |
| ``threads``        | torch intra-op threads on CPU (``threads`` if given); None on CUDA         |

Peak memory, ``memory_kind``:

* ``cuda_max_allocated`` (CUDA): ``torch.cuda.max_memory_allocated`` after
  ``torch.cuda.reset_peak_memory_stats``: the largest total of tensors allocated on the device
  during the forward, weights included (not the caching allocator's reserve, nor the CUDA
  context).
* ``rss_delta`` (CPU): the growth of the process's resident memory during one forward: the
  kernel's high-water mark ``VmHWM`` (``/proc/self/status``), reset to the current RSS by
  writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) just before, minus ``VmRSS`` just
  before. Freed heap memory is first returned to the system (``gc.collect`` and glibc
  ``malloc_trim``), so earlier passes do not hide the growth. It is activations and
  workspace, weights excluded (they are resident before). Where the mark cannot be reset
  (not Linux, or ``clear_refs`` not writable) it is the growth of ``ru_maxrss`` (the
  process's lifetime peak), which undercounts when an earlier peak was higher; ``notes`` says so.

Timing budget: warm-up, latency and the batch-size sweep together stop after about
``max_seconds`` (at least 5 timed forwards at batch 1, at least one per batch size; a batch
size whose single forward overruns its share of the budget ends the sweep, as does a CUDA
out-of-memory error). On CUDA the forward runs in channels-last under autocast (bf16 where
supported, else fp16), as :class:`ironsight.cluster.predictor.Predictor` runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ironsight")

MIB = 2**20
WARMUP_FORWARDS = 3
MIN_LATENCY_FORWARDS = 5
MAX_LATENCY_FORWARDS = 200
LATENCY_SHARE = 0.4  # of max_seconds; the batch-size sweep gets the rest


@dataclass(frozen=True)
class ModelProfile:
    """One model's speed and size on one device (see the module docstring for each field)."""

    device: str
    params: int
    flops_per_image: int | None
    latency_ms_p50: float
    latency_ms_p95: float
    throughput_img_s: float
    best_batch_size: int
    peak_memory_mb: float
    memory_kind: str  # "cuda_max_allocated" | "rss_delta"
    threads: int | None
    notes: tuple[str, ...] = ()  # why a number is missing or approximate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


def cpu_peak_growth_mb(fn) -> tuple[float, str | None]:
    """Run ``fn()`` and return (RSS growth during it in MiB, a note when approximate).

    >>> mb, note = cpu_peak_growth_mb(lambda: np.ones(64 * 2**20 // 8).sum())
    >>> mb > 32 or note is not None
    True
    """
    _trim_heap()
    if _reset_hwm() and _status_kib("VmRSS") is not None:
        before = _status_kib("VmRSS")
        fn()
        return max(0, (_status_kib("VmHWM") or before) - before) / 1024, None
    before = _maxrss_kib()
    fn()
    note = ("peak memory is the growth of ru_maxrss (the peak RSS could not be reset through "
            "/proc/self/clear_refs): it undercounts when an earlier peak was higher")
    return max(0, _maxrss_kib() - before) / 1024, note


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[int | None, str | None]:
    """FLOPs of one forward of ``model`` on ``x`` (``FlopCounterMode``), or (None, reason).

    >>> import torch
    >>> count_flops(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.zeros(1, 3, 16, 16))
    (110592, None)
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
        total = int(counter.get_total_flops())
    except Exception as exc:  # noqa: BLE001 - any failure means "unknown", with the reason
        return None, f"FLOPs not counted: {type(exc).__name__}: {str(exc)[:200]}"
    if total <= 0:
        return None, "FLOPs not counted: the counter knows none of the model's operators"
    return total, None


def profile_model(
    model: torch.nn.Module,
    input_size: int,
    *,
    device: str = "cpu",
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64),
    max_seconds: float = 10.0,
    threads: int | None = None,
) -> ModelProfile:
    """Measure ``model`` (float32 NCHW in [0, 1] in, logits out) on ``device``.

    Args:
        model: the module (normalization inside); put in eval mode and moved to ``device``
            (channels-last on CUDA), in place.
        input_size: side of the square input images.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_sizes: batch sizes tried for throughput.
        max_seconds: about how long warm-up, latency and throughput may take together.
        threads: torch intra-op threads on CPU for the measurement (restored after).

    Returns:
        A :class:`ModelProfile`.
    """
    import torch

    if input_size < 1 or not batch_sizes or any(b < 1 for b in batch_sizes) or max_seconds <= 0:
        raise ValueError(f"need input_size >= 1, batch sizes >= 1 and max_seconds > 0; got "
                         f"{input_size}, {batch_sizes}, {max_seconds}")
    cuda = device.startswith("cuda")
    if cuda:
        dev = torch.device(device)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    previous_threads = torch.get_num_threads()
    if threads and not cuda:
        torch.set_num_threads(threads)
    try:
        return _profile(model, input_size, dev, tuple(sorted(set(batch_sizes))), max_seconds)
    finally:
        torch.set_num_threads(previous_threads)


def _profile(model, input_size: int, dev, batch_sizes: tuple[int, ...], max_seconds: float) -> ModelProfile:
    import torch

    from ironsight.cluster.predictor import autocast_dtype

    cuda = dev.type == "cuda"
    notes: list[str] = []
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:
        x = torch.rand(n, 3, input_size, input_size, generator=g)  # float32 in [0, 1]
        if cuda:
            x = x.to(dev).contiguous(memory_format=torch.channels_last)
        return x

    if cuda:  # as the Predictor runs it
        model.to(dev, memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    flops, why = count_flops(model, batch(1))
    if why:
        notes.append(why)
        log.warning("profiling: %s", why)
    amp = autocast_dtype("cuda") if cuda else None

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            if amp is not None:
                with torch.autocast("cuda", dtype=amp):
                    model(x)
            else:
                model(x)

    def timed(x: torch.Tensor) -> float:
        sync()
        start = time.perf_counter()
        forward(x)
        sync()
        return time.perf_counter() - start

    started = time.perf_counter()
    x1 = batch(1)
    for _ in range(WARMUP_FORWARDS):
        timed(x1)
    times: list[float] = []
    latency_budget = max_seconds * LATENCY_SHARE
    while len(times) < MAX_LATENCY_FORWARDS and (
            len(times) < MIN_LATENCY_FORWARDS or time.perf_counter() - started < latency_budget):
        times.append(timed(x1))
    ms = np.asarray(times) * 1000.0

    rates: dict[int, float] = {}
    left = max(0.0, max_seconds - (time.perf_counter() - started))
    share = left / len(batch_sizes)
    for n in batch_sizes:
        try:
            x = batch(n)
            timed(x)  # warm-up (cudnn picks its kernels for this shape)
            done, spent = 0, 0.0
            while done == 0 or spent < share:
                spent += timed(x)
                done += 1
            rates[n] = n * done / spent
            del x
        except torch.cuda.OutOfMemoryError:
            notes.append(f"batch size {n} ran out of GPU memory; larger ones not tried")
            torch.cuda.empty_cache()
            break
        if spent / done > share and n != batch_sizes[-1]:
            notes.append(f"batch size {n} took {1000 * spent / done:.0f} ms per forward; larger "
                         "ones not tried within max_seconds")
            break
    if not rates:
        raise RuntimeError(f"no batch size of {batch_sizes} fits in the GPU's memory")
    best = max(rates, key=lambda n: rates[n])

    x = batch(best)
    if cuda:
        forward(x)
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
        forward(x)
        sync()
        peak_mb, kind = torch.cuda.max_memory_allocated(dev) / MIB, "cuda_max_allocated"
    else:
        peak_mb, note = cpu_peak_growth_mb(lambda: forward(x))
        kind = "rss_delta"
        if note:
            notes.append(note)
    return ModelProfile(
        device=str(dev),
        params=int(params),
        flops_per_image=flops,
        latency_ms_p50=float(np.percentile(ms, 50)),
        latency_ms_p95=float(np.percentile(ms, 95)),
        throughput_img_s=float(rates[best]),
        best_batch_size=int(best),
        peak_memory_mb=float(peak_mb),
        memory_kind=kind,
        threads=None if cuda else torch.get_num_threads(),
        notes=tuple(notes),
    )
