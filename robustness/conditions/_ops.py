"""Image operations shared by several condition families' NumPy definitions (tensor versions
for the batched ones are in ``_torch_ops``): OpenCV resizing, skimage's Gaussian filter and
imagecorruptions' clipped zoom.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_CV2_RESIZE = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def _resize(x: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """Resize float (H, W, 3) ``x`` with OpenCV (per image, much faster than torch's ops).

    ``area`` averages the covered source pixels by their covered fraction: at non-integer
    factors it is closer to PIL's BOX, which ImageNet-C's pixelate uses, than torch's adaptive
    pooling was (mean abs difference 18 vs 28 grey levels at 64 -> 38 px on noise); at integer
    factors all three agree. ``bilinear`` uses half-pixel centres (torch's align_corners=False).
    """
    return cv2.resize(np.ascontiguousarray(x, dtype=np.float32), (w, h), interpolation=_CV2_RESIZE[mode])


def _gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius < 1:
        return np.ones(1, np.float32)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _gauss(x: np.ndarray, sigma: float, sigma_x: float | None = None, *, truncate: float = 4.0,
           border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """skimage ``gaussian`` (scipy ``gaussian_filter``) over the two image axes of ``x``.

    Defaults as skimage's: ``truncate=4``, ``mode="nearest"`` (``BORDER_REPLICATE``);
    ``BORDER_REFLECT`` is scipy's ``mode="reflect"``. ``sigma_x`` defaults to ``sigma``.
    """
    ky = _gauss_kernel(sigma, truncate)
    kx = ky if sigma_x is None else _gauss_kernel(sigma_x, truncate)
    if max(len(kx), len(ky)) // 2 >= min(x.shape[:2]):
        border = cv2.BORDER_REPLICATE  # reflection needs a kernel narrower than the image
    return cv2.sepFilter2D(np.ascontiguousarray(x, np.float32), -1, kx, ky, borderType=border)


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """imagecorruptions' ``clipped_zoom``: the centre ``1 / zoom`` of ``x`` magnified back to
    ``x``'s size (its first rows and columns, as there).

    One ``warpAffine`` with scipy ``zoom(order=1)``'s sampling grid (output pixel ``i`` reads
    input ``i * (n_in - 1) / (n_out - 1)``: corners aligned), bilinear.
    """
    h, w = x.shape[:2]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = round(ch * zoom), round(cw * zoom)  # scipy's output shape
    sy = (ch - 1) / (oh - 1) if oh > 1 else 0.0
    sx = (cw - 1) / (ow - 1) if ow > 1 else 0.0
    m = np.array([[sx, 0.0, left], [0.0, sy, top]], np.float32)
    return cv2.warpAffine(np.ascontiguousarray(x, np.float32), m, (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
