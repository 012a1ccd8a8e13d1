"""Conditions on batches of tensors, on the device that runs the model.

The audit's predictor gets each batch of clean images once and makes every (condition,
severity) variant of it where the model is (the GPU when there is one): :func:`corrupt_batch`.
A condition with a batched definition (``Condition.batched``, :func:`register_condition(...,
batched=True) <ironsight.robustness.conditions.register_condition>`) runs on the whole batch as tensor
operations; one without runs its NumPy definition image by image on the CPU (the weather
family, glass blur's shuffles...) and the result is moved to the device.

**Randomness.** Image i's draws come from its own torch CPU generator seeded from
``(seed, condition name, key_i)`` (:class:`BatchRng`), so a variant is a pure function of
``(key, name, severity, seed)``: the same in a batch of one (:func:`run_batched_one`, what
:func:`~ironsight.robustness.conditions.apply_condition` and the report's example images use)
and in a batch of 64, on the CPU and on a GPU (the draws are made on the CPU and copied; the
arithmetic on the device rounds in its own way, well under one grey level). The five
severities of one image share their draws (common random numbers, as the NumPy definitions):
:meth:`BatchRng.rewind` before each severity replays the draws made for the first one
instead of drawing them again.

**Rounding.** Variants are rounded to 256 grey levels, as a corrupted image saved to disk
(and as :func:`apply_condition` returns uint8 for uint8 input).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions import Condition


def _seed(seed: int, name: str, key: str) -> int:
    """A 63-bit generator seed, a pure function of ``(seed, name, key)`` (not Python's hash,
    which is salted per process: every worker must agree)."""
    h = hashlib.blake2b(f"{int(seed)}\x00{name}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


class BatchRng:
    """Random draws for a batch of images, each image from its own seeded CPU generator.

    Every method returns a tensor with a leading batch dimension N on :attr:`device`; row i is
    drawn from image i's generator only. Draws are remembered in call order: after
    :meth:`rewind`, the same calls (same method, same shape) return the same tensors without
    drawing again, which is how the severities of one image share their random numbers.

    Args:
        name: the condition.
        keys: each image's stable id (the eval set's id column).
        seed: the run's seed.
        device: where the returned tensors live.

    >>> import torch
    >>> rng = BatchRng("doc", ["a", "b"], seed=0, device="cpu")
    >>> first = rng.rand(3)
    >>> first.shape
    torch.Size([2, 3])
    >>> rng.rewind(); bool((rng.rand(3) == first).all())
    True
    >>> alone = BatchRng("doc", ["b"], seed=0, device="cpu").rand(3)
    >>> bool((alone[0] == first[1]).all())  # image "b" draws the same in any batch
    True
    """

    def __init__(self, name: str, keys: Sequence[str], *, seed: int, device: Any = "cpu") -> None:
        import torch

        self.name = name
        self.keys = [str(k) for k in keys]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(_seed(seed, name, k)) for k in self.keys]
        self._draws: list[tuple[tuple, torch.Tensor]] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self.keys)

    def rewind(self) -> None:
        """Replay: the next calls return the draws already made, in the same order."""
        self._next = 0

    def _draw(self, what: tuple, make) -> torch.Tensor:
        import torch

        if self._next < len(self._draws) and self._draws[self._next][0] == what:
            out = self._draws[self._next][1]
        else:
            out = torch.stack([make(g) for g in self.generators]).to(self.device, non_blocking=True)
            del self._draws[self._next:]  # a different call sequence: forget what followed
            self._draws.append((what, out))
        self._next += 1
        return out

    def rand(self, *shape: int) -> torch.Tensor:
        """(N, *shape) float32 uniform in [0, 1)."""
        import torch

        return self._draw(("rand", shape), lambda g: torch.rand(shape, generator=g))

    def normal(self, *shape: int) -> torch.Tensor:
        """(N, *shape) float32 standard normal."""
        import torch

        return self._draw(("normal", shape), lambda g: torch.randn(shape, generator=g))

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """(N,) float32 uniform in [low, high): one scalar per image (an angle, a position)."""
        return low + (high - low) * self.rand(1)[:, 0]

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """(N, *shape) int64 uniform in [low, high)."""
        import torch

        return self._draw(("integers", low, high, shape),
                          lambda g: torch.randint(low, high, shape, generator=g))

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts for ``rates`` (N, ...), drawn on the CPU, returned on ``rates``' device.

        Image i's counts come from a generator seeded by a draw of image i's own (replayed after
        :meth:`rewind`), so every severity starts from the same state, as the NumPy definitions
        did (a fresh generator per severity): a batch and each image alone agree for any list
        of severities. The counts depend on the rates, hence on the severity.

        >>> import torch
        >>> rng = BatchRng("doc", ["a", "b"], seed=0)
        >>> first = rng.poisson(torch.full((2, 4), 5.0))
        >>> rng.rewind(); bool((rng.poisson(torch.full((2, 4), 5.0)) == first).all())
        True
        >>> alone = BatchRng("doc", ["b"], seed=0).poisson(torch.full((1, 4), 5.0))
        >>> bool((alone[0] == first[1]).all())
        True
        """
        import torch

        seeds = self.integers(0, 2**62, 1)[:, 0].tolist()
        cpu = rates.detach().float().cpu()
        out = torch.stack([torch.poisson(cpu[i], generator=torch.Generator().manual_seed(seed))
                           for i, seed in enumerate(seeds)])
        return out.to(rates.device, non_blocking=True)


def run_batched_one(cond: Condition, x: np.ndarray, severity: int, *, seed: int, key: str) -> np.ndarray:
    """``cond.batched`` on one (H, W, 3) float image in [0, 1] on the CPU; (H, W, 3) float32."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(2, 0, 1)[None]
    rng = BatchRng(cond.name, [key], seed=seed, device="cpu")
    with torch.inference_mode():
        out = cond.batched(t, severity, rng)
    return out[0].permute(1, 2, 0).float().cpu().numpy()


def corrupt_batch(name: str, x: torch.Tensor, severities: Sequence[int], *, seed: int,
                  keys: Sequence[str], threads: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
    """Every severity of condition ``name`` on the batch ``x``, one severity at a time.

    Args:
        name: a registered condition.
        x: (N, 3, H, W) float32 in [0, 1], on the device the variants are wanted on.
        severities: the suite's severities.
        seed: the run's seed.
        keys: the images' ids (N).
        threads: for a condition without a batched definition, images corrupted at once
            (OpenCV and NumPy release the GIL).

    Yields:
        ``(severity, variant)``: variant (N, 3, H, W) float32 in [0, 1] on ``x``'s device,
        rounded to 256 levels; equal (up to the device's float rounding) to
        :func:`~ironsight.robustness.conditions.apply_condition` on each image alone.
    """
    import torch

    from ironsight.robustness.conditions import SEVERITIES, condition_rng, get_condition

    cond = get_condition(name)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"severities {bad} for condition {name!r} are out of range; expected {SEVERITIES}")
    if len(keys) != len(x):
        raise ValueError(f"{len(keys)} keys for a batch of {len(x)} images")
    if cond.batched is not None:
        rng = BatchRng(name, keys, seed=seed, device=x.device)
        for severity in severities:
            rng.rewind()
            with torch.inference_mode():
                variant = _quantize(cond.batched(x, severity, rng))
            yield severity, variant
        return
    images = x.detach().permute(0, 2, 3, 1).float().cpu().numpy()  # (N, H, W, 3) in [0, 1]
    pool = ThreadPoolExecutor(threads) if threads > 1 and len(images) > 1 else None
    try:
        for severity in severities:
            def one(i: int, severity: int = severity) -> np.ndarray:
                rng = condition_rng(name, seed=seed, key=str(keys[i]))
                return np.asarray(cond.fn(images[i], severity, rng), np.float32)

            out = np.stack(list(pool.map(one, range(len(images))) if pool else map(one, range(len(images)))))
            with torch.inference_mode():
                variant = _quantize(torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, non_blocking=True))
            yield severity, variant
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to 256 levels (``np.rint(out * 255) / 255`` as a uint8 image)."""
    return x.float().clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)
