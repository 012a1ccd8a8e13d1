"""Class activation maps: where a model looked when it made a (wrong) prediction.

The audit and compare reports show, next to each misclassified example, a heat map of the
pixels that drove the predicted class. The maps come from `torchcam
<https://github.com/frgfm/torch-cam>`_ (its ``GradCAM`` extractor and ``overlay_mask``); this
module only picks the layer, batches the images and normalizes the result.

| the model                                             | method                 | map from                  |
|-------------------------------------------------------|------------------------|---------------------------|
| has an ``nn.Conv2d`` and ends in spatial feature maps | ``Grad-CAM (<layer>)`` | the last module whose     |
| (ResNet, VGG, MobileNet, SqueezeNet, the demo CNNs)   |                        | output is an (N, C, h, w) |
|                                                       |                        | map with h or w > 1       |
| no ``nn.Conv2d`` (an MLP, an exported graph), or      | ``saliency (fallback)``| abs. gradient of the      |
| tokens after its last spatial map (a ViT's patches)   |                        | class score w.r.t. pixels |

The layer is found automatically by running the first image once with forward hooks, so
no per-architecture table is needed. Both methods are deterministic on CPU (no sampling, no
noise); maps are upsampled to the image size (bilinear) and min-max normalized per image to
[0, 1] (a flat map is all zeros).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("ironsight")

SALIENCY = "saliency (fallback)"
_CHUNK = 16  # images per backward pass: bounds memory at 224 px


def _module(model):
    """The ``nn.Module`` of a :class:`~ironsight.cluster.models.LoadedModel` or the module itself."""
    return getattr(model, "module", model)


def find_target_layer(model, image) -> str | None:
    """The name of the module whose output Grad-CAM should use, or None for the fallback.

    ``image`` is one (1, 3, H, W) float tensor. None when no ``nn.Conv2d`` runs, when no module
    outputs a spatial (N, C, h, w) map, or when a token sequence (3-D output) follows the last
    spatial map (a transformer after its patch embedding: Grad-CAM on patches says little).
    """
    import torch
    from torch import nn

    module = _module(model)
    records: list[tuple[str, nn.Module, tuple]] = []
    handles = []

    def hook(name):
        def record(mod, _inputs, output):
            if isinstance(output, torch.Tensor):
                records.append((name, mod, tuple(output.shape)))
        return record

    try:
        for name, mod in module.named_modules():
            if name:  # the root's output is the logits
                handles.append(mod.register_forward_hook(hook(name)))
        with torch.no_grad():
            module(image)
    finally:
        for h in handles:
            h.remove()
    if not any(isinstance(mod, nn.Conv2d) for _, mod, _ in records):
        return None
    last = None
    for i, (_name, _mod, shape) in enumerate(records):
        if len(shape) == 4 and any(s > 1 for s in shape[2:]):
            last = i
    if last is None or any(len(shape) == 3 for _, _, shape in records[last + 1:]):
        return None
    return records[last][0]


def activation_maps(model, images, targets: list[int]) -> tuple[np.ndarray, str]:
    """Activation maps of ``images`` for the classes ``targets`` (one per image).

    Args:
        model: A :class:`~ironsight.cluster.models.LoadedModel` or an ``nn.Module`` taking
            (N, 3, H, W) float32 in [0, 1] (normalization inside) and giving logits.
        images: (N, 3, H, W) float32 tensor in [0, 1].
        targets: The class to explain per image (the audit passes the prediction).

    Returns:
        ``(maps, method)``: maps (N, H, W) float32 in [0, 1], and the method's name,
        ``"Grad-CAM (<layer>)"`` or :data:`SALIENCY`.

    >>> import torch
    >>> from torch import nn
    >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    >>> maps, method = activation_maps(mlp, torch.rand(2, 3, 8, 8), [0, 3])
    >>> maps.shape, method
    ((2, 8, 8), 'saliency (fallback)')
    """
    module = _module(model)
    n, _, h, w = images.shape
    if len(targets) != n:
        raise ValueError(f"activation_maps: {n} images but {len(targets)} targets")
    if n == 0:
        return np.zeros((0, h, w), np.float32), SALIENCY
    images = images.detach().float()
    layer = find_target_layer(module, images[:1])
    if layer is not None:
        try:
            maps = _gradcam(module, images, targets, layer)
            return maps, f"Grad-CAM ({layer})"
        except RuntimeError as exc:  # e.g. the layer's output does not reach the score
            log.warning("Grad-CAM on layer %s failed (%s); using gradient saliency", layer, exc)
    return _saliency(module, images, targets), SALIENCY


def _gradcam(module, images, targets: list[int], layer: str) -> np.ndarray:
    import torch
    from torchcam.methods import GradCAM

    out = []
    with torch.enable_grad(), GradCAM(module, target_layer=layer, input_shape=tuple(images.shape[1:])) as cam:
        for start in range(0, len(images), _CHUNK):
            x = images[start:start + _CHUNK].clone().requires_grad_(True)  # gradients reach the layer
            scores = module(x)
            maps = cam(class_idx=[int(t) for t in targets[start:start + _CHUNK]], scores=scores)[0]
            out.append(_fit(maps.detach(), images.shape[2:]))
    return np.concatenate(out)


def _saliency(module, images, targets: list[int]) -> np.ndarray:
    """Plain gradient saliency: |d score_target / d pixel|, max over the colour channels."""
    import torch

    out = []
    with torch.enable_grad():
        for start in range(0, len(images), _CHUNK):
            x = images[start:start + _CHUNK].clone().requires_grad_(True)
            idx = torch.tensor([int(t) for t in targets[start:start + _CHUNK]]).view(-1, 1)
            score = module(x).gather(1, idx.to(x.device)).sum()
            (grad,) = torch.autograd.grad(score, x)
            out.append(_fit(grad.abs().amax(dim=1), images.shape[2:]))
    return np.concatenate(out)


def _fit(maps, size) -> np.ndarray:
    """(N, h, w) maps -> (N, H, W) float32 in [0, 1]: bilinear upsampling, per-map min-max."""
    import torch.nn.functional as F

    maps = maps.float().cpu()
    if tuple(maps.shape[1:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    arr = maps.numpy().astype(np.float32)
    lo = arr.min(axis=(1, 2), keepdims=True)
    span = arr.max(axis=(1, 2), keepdims=True) - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        arr = np.where(span > 0, (arr - lo) / np.where(span > 0, span, 1), 0.0)
    return np.nan_to_num(arr, nan=0.0).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with ``cam`` (h, w) in [0, 1] drawn over it in the jet
    colour map (torchcam's ``overlay_mask``); ``alpha`` is the image's share.

    >>> overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2), np.float32)).shape
    (4, 4, 3)
    """
    from PIL import Image
    from torchcam.utils import overlay_mask

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    mask = Image.fromarray(np.clip(np.asarray(cam, np.float32), 0.0, 1.0), mode="F")
    return np.asarray(overlay_mask(img, mask, colormap="jet", alpha=float(alpha)), dtype=np.uint8)
