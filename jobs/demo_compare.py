"""``ironsight demo compare``: three small models of different shapes, trained here on the demo
shapes, compared with the ``quick`` suite, so a newcomer sees the report without weights.

| model         | shape                                            | input  | saved as                      |
|---------------|--------------------------------------------------|--------|-------------------------------|
| ``demo_cnn``  | the demo CNN (:mod:`ironsight.cluster.models.demo_cnn`), 5 conv stages | 64 px | safetensors + card (``ironsight demo``'s, shared cache) |
| ``tiny_cnn``  | 3 narrow conv stages: fewest FLOPs, least accurate | 32 px | torch.export program + card |
| ``separable`` | depthwise-separable stages (MobileNet-like)       | 64 px  | torch.export program + card   |

The two extra models train in seconds each on CPU (:data:`TRAIN_IMAGES` images,
:data:`EPOCHS` passes) with the demo CNN's recipe (same split, augmentation and schedule) and
are cached under ``$IRONSIGHT_CACHE/demo_compare``; ``--retrain`` trains them again. Two
input sizes mean two preprocessings: the comparison decodes the eval images once for each.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ironsight.cluster import synthetic
from ironsight.cluster.models.demo_cnn import (
    DEMO_PREPROCESS,
    TRAIN_SEED,
    _augment,
    _render,
    _warmup_cosine,
    evaluate,
    idle_cores,
)
from ironsight.cluster.models.registry import Normalize

TRAIN_IMAGES = 4000
EPOCHS = 6
OBJECTIVE = "max accuracy s.t. p95_ms <= 20"


def tiny_cnn(num_classes: int = len(synthetic.CLASS_NAMES)) -> nn.Module:
    """Three narrow stages for 32-px input: (N, 3, 32, 32) -> (N, num_classes)."""
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*stage(3, 12), *stage(12, 24), *stage(24, 48), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(48, num_classes))


def separable_cnn(num_classes: int = len(synthetic.CLASS_NAMES)) -> nn.Module:
    """Depthwise-separable stages for 64-px input (each: depthwise 3x3, pointwise 1x1, stride 2)."""
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *stage(16, 32), *stage(32, 64), *stage(64, 128), *stage(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


MODELS = {"tiny_cnn": (tiny_cnn, 32), "separable": (separable_cnn, 64)}


def ensure_models(out: Path, *, retrain: bool, progress: bool) -> list[Path]:
    """The model cards of :data:`MODELS`, training (and caching) those not cached yet."""
    cards, data = [], None
    for name, (build, size) in MODELS.items():
        card = out / name / f"{name}.card.yaml"
        if not card.is_file() or retrain:
            started = time.monotonic()
            if data is None:  # drawn once for both
                data = (_render(TRAIN_SEED, TRAIN_IMAGES, progress, "drawing training images", jpeg=(70, 95)),
                        _render(2, 500, progress, "drawing held-out images", jpeg=(90, 90)))
            acc = train_and_export(build(), name, size, out / name, data, progress=progress)
            print(f"trained {name} ({size} px) in {time.monotonic() - started:.0f}s; held-out accuracy {acc:.3f}")
        cards.append(card)
    return cards


def train_and_export(net: nn.Module, name: str, size: int, folder: Path, data: tuple, *, progress: bool,
                     seed: int = 0) -> float:
    """Train ``net`` on ``data`` (``((train images, labels), (held-out images, labels))``, 64 px
    uint8) at ``size`` px, save it as a torch.export program with its card under ``folder``;
    returns the held-out accuracy."""
    from ironsight.cluster.models.card import ModelCard

    p = DEMO_PREPROCESS
    previous = torch.get_num_threads()
    torch.set_num_threads(idle_cores())
    try:
        (x, y), (ex, ey) = data
        x, ex = _resize(x, size), _resize(ex, size)
        torch.manual_seed(seed)
        model = nn.Sequential(Normalize(p.mean, p.std), net)
        g = torch.Generator().manual_seed(seed)
        steps = EPOCHS * (TRAIN_IMAGES // 64)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_warmup_cosine, total=steps))
        for step in range(steps):
            if step % (TRAIN_IMAGES // 64) == 0:
                order = torch.randperm(TRAIN_IMAGES, generator=g)
                model.train()
            k = step % (TRAIN_IMAGES // 64)
            idx = order[k * 64:(k + 1) * 64]
            loss = F.cross_entropy(model(_augment(x[idx].float().div(255), g)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        accuracy = evaluate(model, ex, ey)
        net.eval()
        program = torch.export.export(net, (torch.zeros(1, 3, size, size),))
    finally:
        torch.set_num_threads(previous)
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(folder / f"{name}.pt2"))
    card = ModelCard(name=name, format="torch_export", weights=f"{name}.pt2", input_size=size,
                     mean=p.mean, std=p.std, class_names=list(synthetic.CLASS_NAMES),
                     description=f"{name} trained on {TRAIN_IMAGES} synthetic images x {EPOCHS} epochs "
                     f"(ironsight demo compare); held-out accuracy {accuracy:.3f}")
    (folder / f"{name}.card.yaml").write_text(card.to_yaml())
    return accuracy


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 at ``size`` px, the whole frame (as a card without ``resize`` feeds it)."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
