"""Image conditions (corruptions) at five severities, in a registry.

Each condition is one pure function ``fn(x, severity, rng) -> x'``, its severity table on its
first line (the bethgelab/imagecorruptions style), randomness drawn only from the explicit
``rng``: either on a float image ``(H, W, 3)`` in [0, 1] (NumPy) or, registered with
``batched=True``, on a batch of tensors ``(N, 3, H, W)`` on any device (:mod:`.batch`; one
definition per condition). :func:`apply_condition` is the entry
point: it takes a ``uint8`` (or float [0, 1]) image, seeds ``rng`` from
``(seed, condition name, key)`` and returns the same dtype and shape.

Tags: ``imagenet_c`` marks exactly ImageNet-C's 15 benchmark corruptions (Hendrycks &
Dietterich 2019; :data:`IMAGENET_C_CONDITIONS`, what its mCE averages), ``imagenet_c_extra``
its 4 held-out extras (:data:`IMAGENET_C_EXTRA_CONDITIONS`). Severity tables are the
reference code's, the ``imagecorruptions`` package (bethgelab), which
``tests/robustness/test_imagenet_c_reference.py`` runs beside these per severity. ms: one
224 px image on one shared CPU core (mean over severities 1-5). [b]: a batched definition
(``batched=True``; tensor operations, those several families share in ``_torch_ops``), its
ms per image of a batch of 32 on one CPU thread, measured beside the NumPy definition it
replaced and scaled by the ratio (so comparable with the other rows); on a GPU it runs where
the model is.

| condition          | family    | tag    | definition                                          |   ms |
|--------------------|-----------|--------|-----------------------------------------------------|------|
| gaussian_noise     | noise     | IN-C   | + N(0, c) per pixel and channel [b]                 |  0.9 |
| shot_noise         | noise     | IN-C   | Poisson(x * c) / c [b]                              |   14 |
| impulse_noise      | noise     | IN-C   | skimage-style salt and pepper per channel [b]       |    3 |
| speckle_noise      | noise     | extra  | x + x * N(0, c) [b]                                 |  1.4 |
| defocus_blur       | blur      | IN-C   | aliased disk kernel, blurred (FFT) [b]              |    6 |
| glass_blur         | blur      | IN-C   | blur, pixel shuffles, blur (gathered hops) [b]      |   11 |
| motion_blur        | blur      | IN-C   | one-sided Gaussian streak, random angle [b]         |    9 |
| zoom_blur          | blur      | IN-C   | mean of centre zooms up to 1.11-1.31x [b]           |   17 |
| gaussian_blur      | blur      | extra  | Gaussian, sigma 1-6 (albumentations' kernel) [b]    |    4 |
| snow               | weather   | IN-C   | zoomed, streaked flakes over a greyed image         |   10 |
| frost              | weather   | IN-C   | c0 x + c1 frost; frost texture is procedural (*)    |    6 |
| fog                | weather   | IN-C   | diamond-square plasma fractal haze                  |    3 |
| spatter            | weather   | extra  | water drops (severity 1-3) or mud (4-5)             |    5 |
| brightness         | lighting  | IN-C   | +c on HSV value [b]                                 |    5 |
| contrast           | lighting  | IN-C   | (x - mean) * c + mean [b]                           |  0.8 |
| saturate           | lighting  | extra  | HSV saturation * a + b [b]                          |    9 |
| overexposure       | lighting  |        | brightness under its older name (untagged) [b]      |    5 |
| low_light          | lighting  |        | ImageNet-3DCC ``low_light``: range to [0, c], gamma |   16 |
|                    |           |        | 2, then Poisson-Gaussian sensor noise [b]           |      |
| elastic_transform  | digital   | IN-C   | smooth random displacement (imagecorruptions') [b]  |    3 |
| pixelate           | digital   | IN-C   | PIL box down to c * size, nearest back up [b]       |    3 |
| jpeg_compression   | digital   | IN-C   | JPEG quality 25 to 7 (libjpeg; nvjpeg on a GPU) [b] |    3 |
| occlusion          | occlusion |        | a black rectangle covering c of the image area [b]  |    2 |
| partial_view       | occlusion |        | a crop keeping c of the area, resized back [b]      |    4 |
| noisy_background   | clutter   |        | random shapes and stripes blended into the border   |    9 |

(*) ImageNet-C's frost blends in crops of five photographs that ship with the reference; they
are not copied. :func:`_frost_texture` synthesizes a seeded texture with the photographs'
measured mean colour and spread (fractal noise, ridged "ice veins", grain), so frost is an
approximation: its mean distortion is within 25% of the reference's per severity (tested),
its look is not the same. Glass blur's pixel shuffle is a vectorised stand-in for the
reference's sequential Python loop (~0.9 s per image): within 10% of its distortion.

**Layout.** This module is the registry (:class:`Condition`, :func:`register_condition`,
:func:`get_condition`, :func:`list_conditions`, :func:`apply_condition`, the seeding); each
family is one module beside it that registers its conditions when this package is imported
(``lighting``, ``blur``, ``noise``, ``weather``, ``occlusion``, ``clutter``, ``digital``), and
``_ops`` holds the image operations several families share (``_torch_ops`` their tensor
versions for the batched definitions). torch is imported on a condition's first use, not by
``import``.

**Image size.** ImageNet-C's spatial parameters (blur sigmas and radii, motion lengths, glass
shuffle distances) are defined for 224 px images. Here they are multiplied by
``s = min(H, W) / 224``, so a 64 px image (``s = 0.286``) gets the blur that a 224 px image
would get after being resized to 64 px. Snow, frost and spatter draw their layer at the
224 px size of the image (shorter side 224) with the published pixel parameters and resize
it to the image. Pixelate, JPEG, zoom blur, fog (a fractal as large as the image) and elastic
transform (imagecorruptions' version, in fractions of the image) are already relative to the
image size and are not scaled; occlusion, partial view and background clutter are defined as
fractions of the image.

**Randomness.** ``rng`` is seeded from ``(seed, name, key)`` and *not* from the severity:
the five severities of one image share the same random draws (the same noise field, blur
angle, rectangle position, clutter), scaled by the severity table. This is "common random
numbers": the distortion of one image grows smoothly with severity instead of jumping with a
new noise draw per level, and the result is still a pure function of
``(key, name, severity, seed)``.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ironsight.cluster.errors import did_you_mean

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

ConditionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
# fn(x, severity, rng) on a float tensor (N, 3, H, W) in [0, 1], on any device; see .batch
BatchedFn = Callable[..., object]


@dataclass(frozen=True)
class Condition:
    """A registered condition.

    Attributes:
        name: Registry key, e.g. ``"gaussian_noise"``.
        fn: ``fn(x, severity, rng)`` on an ``(H, W, 3)`` float image in [0, 1]; None for a
            condition defined only on batches (``batched``).
        description: One line for reports.
        family: ``lighting``, ``blur``, ``noise``, ``weather``, ``occlusion``, ``clutter`` or
            ``digital``.
        imagenet_c: True on exactly ImageNet-C's 15 benchmark corruptions (the ones its mCE
            averages, comparable to published tables).
        stochastic: False when the output does not depend on ``rng`` (same for every key).
        imagenet_c_extra: True on ImageNet-C's 4 held-out extras (speckle_noise,
            gaussian_blur, spatter, saturate): ImageNet-C's definitions, not in its mCE.
        batched: the condition on a batch of tensors, ``batched(x, severity, rng)`` with ``x``
            (N, 3, H, W) float in [0, 1] on any device and ``rng`` a
            :class:`~ironsight.robustness.conditions.batch.BatchRng`
            (``register_condition(..., batched=True)``). When set it is THE definition:
            :func:`apply_condition` runs it on a batch of one on the CPU, so a single image
            and a batch agree.
    """

    name: str
    fn: ConditionFn | None
    description: str
    family: str
    imagenet_c: bool = False
    stochastic: bool = True
    imagenet_c_extra: bool = False
    batched: BatchedFn | None = None


_REGISTRY: dict[str, Condition] = {}


def register_condition(
    name: str, *, description: str, family: str, imagenet_c: bool = False,
    stochastic: bool = True, imagenet_c_extra: bool = False, batched: bool = False,
) -> Callable[[ConditionFn], ConditionFn]:
    """Decorator adding ``fn`` to the registry under ``name``; a duplicate name raises.

    With ``batched=False`` (default) ``fn`` is the NumPy definition on one ``(H, W, 3)``
    image (``Condition.fn``). With ``batched=True`` it is the batched tensor definition
    (``Condition.batched``, ``Condition.fn`` is None): ``fn(x, severity, rng)`` with ``x``
    (N, 3, H, W) float32 in [0, 1] on the caller's device (the audit's predictor: the GPU
    when there is one) and ``rng`` a
    :class:`~ironsight.robustness.conditions.batch.BatchRng` (per image, seeded from
    ``(seed, name, key)``, so image i's result does not depend on the rest of the batch, the
    device or the severity); it returns the same shape (clipping and uint8 rounding are the
    caller's). Import torch inside ``fn``: importing the registry must not import torch.

    >>> @register_condition("doc_invert", description="negative", family="digital",
    ...                     stochastic=False)
    ... def doc_invert(x, severity, rng):
    ...     return 1.0 - x
    >>> get_condition("doc_invert").family
    'digital'
    >>> @register_condition("doc_dim", description="darker", family="lighting",
    ...                     stochastic=False, batched=True)
    ... def doc_dim(x, severity, rng):  # x: (N, 3, H, W) tensor
    ...     return x * (1.0 - 0.1 * severity)
    >>> get_condition("doc_dim").fn is None, get_condition("doc_dim").batched is doc_dim
    (True, True)
    >>> int(apply_condition("doc_dim", np.full((4, 4, 3), 200, np.uint8), 5, seed=0, key="k")[0, 0, 0])
    100
    >>> _ = _REGISTRY.pop("doc_invert"), _REGISTRY.pop("doc_dim")
    """

    def deco(fn: ConditionFn) -> ConditionFn:
        if name in _REGISTRY:
            raise ValueError(f"condition {name!r} is already registered; pick another name")
        if imagenet_c and imagenet_c_extra:
            raise ValueError(f"condition {name!r} is tagged both ImageNet-C and ImageNet-C "
                             "extra; pick one")
        _REGISTRY[name] = Condition(name, None if batched else fn, description, family,
                                    imagenet_c, stochastic, imagenet_c_extra,
                                    fn if batched else None)
        return fn

    return deco


def list_conditions(filter: str | None = None) -> list[str]:
    """Registered condition names, sorted.

    Args:
        filter: A family name (``"blur"``), or a name pattern as in timm's ``list_models``
            (``"*noise"``); without wildcards, a substring of the name.

    >>> list_conditions("blur")
    ['defocus_blur', 'gaussian_blur', 'glass_blur', 'motion_blur', 'zoom_blur']
    >>> list_conditions("*_noise")
    ['gaussian_noise', 'impulse_noise', 'shot_noise', 'speckle_noise']
    """
    names = sorted(_REGISTRY)
    if filter:
        wild = any(ch in filter for ch in "*?[")
        names = [n for n in names if _REGISTRY[n].family == filter
                 or (fnmatch.fnmatchcase(n, filter) if wild else filter in n)]
    return names


def get_condition(name: str) -> Condition:
    """The registered condition ``name``; unknown names raise ``ValueError`` with a
    did-you-mean (:func:`did_you_mean`) and the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        names = list_conditions()
        raise ValueError(
            f"condition {name!r} unknown; {did_you_mean(name, names)}expected one of {', '.join(names)}"
        ) from None


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; workers must agree on the seed.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def condition_rng(name: str, *, seed: int, key: str) -> np.random.Generator:
    """The generator a condition draws from: a pure function of ``(seed, name, key)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, _stable_int(name),
                                  _stable_int(key)])


def apply_condition(name: str, image: np.ndarray, severity: int, *, seed: int,
                    key: str) -> np.ndarray:
    """Apply condition ``name`` at ``severity`` to one image.

    Args:
        name: A registered condition (:func:`list_conditions`).
        image: ``(H, W, 3)`` uint8, or float in [0, 1].
        severity: One of :data:`SEVERITIES`.
        seed: Run seed.
        key: The image's stable id; different images get different random draws.

    Returns:
        The corrupted image, same shape; uint8 for uint8 input, else float32 in [0, 1].

    >>> img = np.full((32, 32, 3), 128, np.uint8)
    >>> out = apply_condition("contrast", img, 5, seed=0, key="img-0")
    >>> out.shape, out.dtype, int(out[0, 0, 0])
    ((32, 32, 3), dtype('uint8'), 128)
    """
    cond = get_condition(name)
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} for condition {name!r} is out of range; "
                         f"expected one of {SEVERITIES}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image for condition {name!r} has shape {image.shape}; expected "
                         "(H, W, 3) RGB (convert grayscale/RGBA first)")
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"float image for condition {name!r} ranges over "
                             f"[{x.min():.3g}, {x.max():.3g}]; expected [0, 1] (divide 0-255 "
                             "values by 255)")
    else:
        raise ValueError(f"image for condition {name!r} is {image.dtype}; expected uint8 or "
                         "float in [0, 1]")
    if cond.batched is not None:
        from ironsight.robustness.conditions.batch import run_batched_one

        out = run_batched_one(cond, x, severity, seed=seed, key=key)
    else:
        out = cond.fn(x, severity, condition_rng(name, seed=seed, key=key))
    out = np.clip(np.asarray(out, np.float32), 0.0, 1.0)
    if out.shape != image.shape:
        raise AssertionError(f"condition {name!r} changed shape {image.shape} -> {out.shape}")
    if image.dtype == np.uint8:
        return np.rint(out * 255.0).astype(np.uint8)
    return out


# The families register their conditions on import (one module per ``family``, shared image
# operations in ``_ops``); they import register_condition from here, defined above.
from ironsight.robustness.conditions import (  # noqa: E402, F401
    blur,
    clutter,
    digital,
    lighting,
    noise,
    occlusion,
    weather,
)

IMAGENET_C_CONDITIONS: tuple[str, ...] = tuple(
    n for n in list_conditions() if _REGISTRY[n].imagenet_c
)
IMAGENET_C_EXTRA_CONDITIONS: tuple[str, ...] = tuple(
    n for n in list_conditions() if _REGISTRY[n].imagenet_c_extra
)
