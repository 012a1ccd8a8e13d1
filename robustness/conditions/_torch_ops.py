"""Tensor operations shared by the batched blur and digital conditions.

Each takes ``x`` (N, C, H, W) float on any device and works on every image and channel at once
(depthwise: a channel of an image only sees itself). Kernels, weight matrices and sampling
grids are built in NumPy (float64, the same formulas as the NumPy definitions these replace)
and moved to ``x``'s device. torch is imported inside the functions: importing the condition
registry must not import it.

| operation     | what                                                 | same as                        |
|---------------|------------------------------------------------------|--------------------------------|
| scale         | ImageNet-C's spatial scale ``min(H, W) / 224``       | the NumPy families' ``s``      |
| pad           | a border of any width (``BORDERS``)                  | OpenCV's ``borderInterpolate`` |
| correlate     | a 2-D kernel, through the FFT                        | ``cv2.filter2D``               |
| sep_correlate | a row kernel, then a column kernel, as two products  | ``cv2.sepFilter2D``            |
|               | with (W, W) and (H, H) matrices, the border folded in|                                |
| gaussian      | Gaussian, radius ``int(truncate * sigma + 0.5)``     | scipy ``gaussian_filter``,     |
|               |                                                      | skimage ``gaussian``           |
| fft_correlate | a padded batch with one kernel per image, or one for | (the FFT behind ``correlate``) |
|               | all                                                  |                                |
| clipped_zoom  | the centre ``1 / zoom`` magnified back, bilinear     | imagecorruptions' clipped zoom |
|               |                                                      | (scipy ``zoom(order=1)``)      |
| pil_resize    | PIL's ``BOX`` or ``NEAREST`` resampling, as two      | ``PIL.Image.resize``           |
|               | products with weight matrices read off PIL           |                                |
| displace      | each image sampled at (j + dx, i + dy), bilinear,    | ``cv2.remap``, BORDER_REFLECT  |
|               | border ``reflect``                                   |                                |

Borders (``BORDERS``), in OpenCV's words for the row ``abcdef``: ``replicate`` ``aa|abcdef|ff``
(scipy ``nearest``, skimage's default), ``reflect`` ``ba|abcdef|fe`` (scipy ``reflect``),
``reflect101`` ``cb|abcdef|ed`` (OpenCV's default, torch's ``reflect``, scipy ``mirror``). A
border wider than the image reflects again, as OpenCV's.

**Speed.** On a CPU, strided per-element work (``index_select`` along W, ``conv2d`` with one
channel, one pass per kernel tap) is what costs; a product with a dense (W, W) matrix runs
at BLAS speed and an FFT's cost does not grow with the kernel. So the 1-D filters are
matrix products (their cost grows with the image side, not the kernel: meant for model
input sizes, a few hundred pixels), 2-D kernels go through the FFT, and resampling through
``grid_sample`` or matrices.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from ironsight.robustness.conditions._ops import _gauss_kernel

if TYPE_CHECKING:
    import torch

BORDERS = ("replicate", "reflect", "reflect101")


def scale(x: torch.Tensor) -> float:
    """ImageNet-C's spatial scale for ``x`` (N, C, H, W): its 224 px parameters times this."""
    return min(x.shape[-2], x.shape[-1]) / 224.0


def tensor_like(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """NumPy ``a`` as a tensor of ``like``'s dtype on its device (kernels, weight matrices)."""
    import torch

    return torch.as_tensor(np.ascontiguousarray(a), dtype=like.dtype, device=like.device)


def border_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each position of a length-``n`` axis padded by ``before`` and ``after``.

    >>> border_index(3, 2, 2, "replicate").tolist()
    [0, 0, 0, 1, 2, 2, 2]
    >>> border_index(3, 2, 2, "reflect").tolist()
    [1, 0, 0, 1, 2, 2, 1]
    >>> border_index(3, 2, 4, "reflect101").tolist()
    [2, 1, 0, 1, 2, 1, 0, 1, 2]
    """
    if mode not in BORDERS:
        raise ValueError(f"border {mode!r} unknown; expected one of {', '.join(BORDERS)}")
    i = np.arange(-before, n + after)
    if mode == "replicate" or n == 1:
        return np.clip(i, 0, n - 1)
    period = 2 * n if mode == "reflect" else 2 * n - 2
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i if mode == "reflect" else period - i)


def pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """``x`` (N, C, H, W) with borders of the given widths (:data:`BORDERS`)."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if mode == "replicate" or (mode == "reflect101" and max(top, bottom) < h and max(left, right) < w):
        return F.pad(x, (left, right, top, bottom), mode="replicate" if mode == "replicate" else "reflect")
    rows = torch.from_numpy(border_index(h, top, bottom, mode)).to(x.device)
    cols = torch.from_numpy(border_index(w, left, right, mode)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _fast_len(n: int) -> int:
    """The smallest length >= n with no prime factor above 5 (a fast FFT size)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_correlate(xp: torch.Tensor, kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``out[..., i, j] = sum over (a, b) of kernel[..., a, b] * xp[..., i + a, j + b]`` for
    ``i < h``, ``j < w``: ``xp`` (N, C, h + kh - 1, w + kw - 1) already padded, ``kernel``
    (kh, kw), or (N, 1, kh, kw) for one kernel per image.

    A circular convolution with the flipped kernel on a fast FFT length at least ``xp``'s:
    the kept window reads only ``xp`` (no wrap-around). Float rounding only (~1e-6).
    """
    import torch

    kh, kw = kernel.shape[-2:]
    s = (_fast_len(xp.shape[-2]), _fast_len(xp.shape[-1]))
    spectrum = torch.fft.rfft2(xp, s=s) * torch.fft.rfft2(kernel.flip(-2, -1).to(xp.dtype), s=s)
    return torch.fft.irfft2(spectrum, s=s)[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w].contiguous()


def correlate(x: torch.Tensor, kernel: np.ndarray, mode: str = "reflect101") -> torch.Tensor:
    """Each channel of ``x`` (N, C, H, W) correlated with the odd-sized 2-D ``kernel``, the
    border ``mode`` (``cv2.filter2D``, which also switches to the DFT for large kernels; a
    convolution for the symmetric kernels used here).

    >>> import torch
    >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
    >>> k = np.arange(9.0).reshape(3, 3)
    >>> bool(np.allclose(correlate(x, k)[0, 0, 1:4, 1:4], np.flip(k), atol=1e-5))  # flipped response
    True
    """

    kh, kw = kernel.shape
    xp = pad(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    return fft_correlate(xp, tensor_like(kernel, x), x.shape[-2], x.shape[-1])


def correlation_matrix(n: int, kernel: np.ndarray, mode: str) -> np.ndarray:
    """(n, n) matrix ``M`` with ``M @ v`` the correlation of ``v`` (length n) with the odd-sized
    1-D ``kernel``, border ``mode`` folded in.

    >>> correlation_matrix(3, np.array([1.0, 2.0, 3.0]), "replicate").tolist()
    [[3.0, 3.0, 0.0], [1.0, 2.0, 3.0], [0.0, 1.0, 5.0]]
    """
    r = len(kernel) // 2
    src = border_index(n, r, r, mode)
    m = np.zeros((n, n))
    rows = np.arange(n)
    for t, k in enumerate(kernel):  # within one tap the rows are distinct: no lost additions
        m[rows, src[t:t + n]] += k
    return m


def sep_correlate(x: torch.Tensor, ky: np.ndarray, kx: np.ndarray,
                  mode: str = "reflect101") -> torch.Tensor:
    """Each channel of ``x`` (N, C, H, W) correlated with the 1-D ``kx`` along the rows, then
    ``ky`` along the columns, odd lengths, the border ``mode`` (``cv2.sepFilter2D``): ``My @ x
    @ Mx.T`` with :func:`correlation_matrix`.

    >>> import torch
    >>> y = torch.rand(2, 3, 9, 12)
    >>> kx, ky = np.array([1.0, 2.0, 1.0]) / 4, np.array([1.0, 0.0, 3.0]) / 4
    >>> bool(torch.allclose(sep_correlate(y, ky, kx), correlate(y, np.outer(ky, kx)), atol=1e-5))
    True
    """
    h, w = x.shape[-2:]
    if len(kx) > 1:
        x = x @ tensor_like(correlation_matrix(w, kx, mode).T, x)
    if len(ky) > 1:
        x = tensor_like(correlation_matrix(h, ky, mode), x) @ x
    return x


def gaussian(x: torch.Tensor, sigma: float, sigma_x: float | None = None, *, truncate: float = 4.0,
             mode: str = "replicate") -> torch.Tensor:
    """scipy ``gaussian_filter`` / skimage ``gaussian`` over the two image axes of ``x``.

    Defaults as skimage's: ``truncate=4`` (radius ``int(truncate * sigma + 0.5)``, scipy's),
    border ``replicate`` (its ``mode="nearest"``). ``sigma`` is along H, ``sigma_x`` (default
    ``sigma``) along W.

    >>> import torch
    >>> x = torch.zeros(1, 1, 9, 9); x[0, 0, 4, 4] = 1.0
    >>> y = gaussian(x, 1.0)
    >>> round(float(y.sum()), 5), round(float(y[0, 0, 4, 4]), 4)  # mass kept; 0.3989 ** 2
    (1.0, 0.1592)
    """
    ky = _gauss_kernel(sigma, truncate)
    kx = ky if sigma_x is None else _gauss_kernel(sigma_x, truncate)
    return sep_correlate(x, ky, kx, mode)


def _zoom_positions(n: int, zoom: float) -> np.ndarray:
    """Where output pixel ``i`` of imagecorruptions' clipped zoom reads one axis of the input:
    ``start + i * (c - 1) / (o - 1)``, ``c`` the centre crop ``ceil(n / zoom)``, ``o =
    round(c * zoom)`` scipy's zoomed length (corners aligned); the first ``n`` outputs kept."""
    c = math.ceil(n / zoom)
    o = round(c * zoom)
    step = (c - 1) / (o - 1) if o > 1 else 0.0
    return np.clip((n - c) // 2 + np.arange(n) * step, 0, n - 1)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """imagecorruptions' ``clipped_zoom`` on ``x`` (N, C, H, W): the centre ``1 / zoom``
    magnified back to ``x``'s size, bilinear as scipy ``zoom(order=1)`` (``grid_sample`` at
    its sample positions; OpenCV's ``warpAffine`` rounds them to 1/32 px).

    >>> import torch
    >>> ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    >>> [round(v, 2) for v in clipped_zoom(ramp, 2.0)[0, 0, 0].tolist()]  # centre 2..5, 8 wide
    [2.0, 2.43, 2.86, 3.29, 3.71, 4.14, 4.57, 5.0]
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape

    def normalized(size: int) -> torch.Tensor:  # align_corners=True: -1 and 1 are the end pixels
        g = 2 * _zoom_positions(size, zoom) / (size - 1) - 1 if size > 1 else np.zeros(1)
        return torch.as_tensor(g, dtype=x.dtype, device=x.device)

    gy, gx = torch.meshgrid(normalized(h), normalized(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


_PIL_RESAMPLE = ("box", "nearest")


@functools.lru_cache(maxsize=32)
def _pil_matrix(n_in: int, n_out: int, resample: str) -> np.ndarray:
    """PIL's resampling weights from ``n_in`` to ``n_out`` pixels, (n_out, n_in) float32.

    Read off PIL itself: an ``n_in`` x ``n_in`` identity image (32-bit float, mode ``F``)
    resized along its rows only; row r of the result is where source pixel r lands. So box
    edges and nearest's rounding are PIL's, not a re-derivation of them.
    """
    from PIL import Image

    method = {"box": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}[resample]
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    return np.asarray(eye.resize((n_out, n_in), method)).T.copy()  # writable, C-contiguous


def pil_resize(x: torch.Tensor, h: int, w: int, resample: str) -> torch.Tensor:
    """``x`` (..., H, W) resized to (h, w) as ``PIL.Image.resize`` with ``BOX`` or
    ``NEAREST`` on each channel as a 32-bit float image: ``My @ x @ Mx.T``.

    ``box`` averages the source pixels whose centres fall in each output pixel (PIL's box
    filter, not OpenCV's fractional area); ``nearest`` has one weight 1 per output pixel, so
    the product copies PIL's source pixel exactly.

    >>> import torch
    >>> pil_resize(torch.arange(6.0).view(1, 6), 1, 3, "box").tolist()
    [[0.5, 2.5, 4.5]]
    >>> pil_resize(torch.tensor([[1.0, 2.0]]), 1, 5, "nearest").tolist()
    [[1.0, 1.0, 2.0, 2.0, 2.0]]
    """
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"resampling {resample!r} unknown; expected one of {', '.join(_PIL_RESAMPLE)}")
    hin, win = x.shape[-2:]
    return tensor_like(_pil_matrix(hin, h, resample), x) @ x @ tensor_like(_pil_matrix(win, w, resample).T, x)


def displace(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) sampled at ``(j + dx, i + dy)`` for each pixel (i, j), ``dx`` and
    ``dy`` (N, H, W) in pixels: bilinear, border ``reflect`` (``cv2.remap`` with
    ``BORDER_REFLECT``, without its 1/32 px fixed-point coordinates).

    ``grid_sample``'s reflection about the outer pixel edges (``align_corners=False``) then
    its clip to the edge pixel centres gives OpenCV's ``ba|abcdef|fe``: within half a pixel
    of the border both read the edge pixel.

    >>> import torch
    >>> x = torch.arange(4.0).view(1, 1, 1, 4)
    >>> displace(x, torch.full((1, 1, 4), 0.5), torch.zeros(1, 1, 4)).tolist()  # last: 3 and 3
    [[[[0.5, 1.5, 2.5, 3.0]]]]
    """
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    # pixel j's centre is (2 j + 1) / w - 1 in grid_sample's [-1, 1] (align_corners=False)
    gy, gx = torch.meshgrid((2 * torch.arange(h, device=x.device, dtype=x.dtype) + 1) / h - 1,
                            (2 * torch.arange(w, device=x.device, dtype=x.dtype) + 1) / w - 1,
                            indexing="ij")
    per_pixel = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)
    grid = torch.stack([dx, dy], dim=-1).mul_(per_pixel).add_(torch.stack([gx, gy], dim=-1))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
