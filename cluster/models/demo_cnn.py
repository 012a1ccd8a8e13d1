"""A small CNN for the 64x64 synthetic shapes, and the one-minute CPU recipe that trains it.

The demo, the tests and the benchmarks need a model with real, non-trivial accuracy and
nothing may be downloaded, so we train one on :mod:`ironsight.cluster.synthetic` images. Training
uses split seed 1; the held-out accuracy uses split seed 2, which never shares an image.

Architecture (``width=16``; about 0.4M parameters, 20M multiply-adds per image):

| stage | layers                                  | output        | receptive field |
|-------|-----------------------------------------|---------------|-----------------|
| stem  | conv3x3/2 16, BN, ReLU                  | 16 x 32 x 32  | 3               |
| 1     | conv3x3 32, BN, ReLU, maxpool 2         | 32 x 16 x 16  | 11              |
| 2     | conv3x3 64, BN, ReLU, maxpool 2         | 64 x 8 x 8    | 27              |
| 3     | conv3x3 128, BN, ReLU, maxpool 2        | 128 x 4 x 4   | 59              |
| 4     | conv3x3 256, BN, ReLU, global avg pool  | 256           | 91              |
| head  | linear 8                                | 8 logits      |                 |

The last stage must see a whole shape (up to 46 px across): with three stages the
receptive field stopped at 39 px and accuracy stalled near 70%.

``ironsight demo compare`` compares the demo CNN with two models of other shapes, trained by
:func:`ensure_compare_models` with the same recipe on fewer images (:data:`COMPARE_TRAIN`
images x :data:`COMPARE_EPOCHS` epochs: about 95 CPU-seconds for both, which reach about 50%
held-out accuracy each, the demo CNN about 90%) and saved like the demo CNN (safetensors +
model card, cached under ``$IRONSIGHT_CACHE/demo_compare``):

| card           | arch                 | shape                                               | input |
|----------------|----------------------|-----------------------------------------------------|-------|
| ``tiny_cnn``   | ``demo_tiny_cnn``    | 3 narrow conv stages (12/24/48): fewest FLOPs; its receptive field misses big shapes | 32 px |
| ``separable``  | ``demo_separable_cnn`` | MobileNet-like: a conv stem, 4 depthwise-separable stride-2 stages | 64 px |

Two input sizes mean two preprocessings: a comparison decodes the eval images once for each.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ironsight.cluster import storage, synthetic
from ironsight.cluster.models.registry import Normalize, get_model_info, register_model
from ironsight.cluster.preprocess import Preprocess

DEMO_PREPROCESS = Preprocess(
    resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear"
)
TRAIN_SEED = 1  # synthetic split seeds: train and held-out eval never share an image
EVAL_SEED = 2
WEIGHTS_NAME = "demo_cnn.safetensors"
CARD_NAME = "demo_cnn.card.yaml"


def idle_cores() -> int:
    """Cores this process may use minus those other processes keep busy (1-minute load), >= 1.

    On a shared 2-core machine torch's OpenMP threads spin-wait on each other when another
    process holds a core: 2 threads then ran a training step 5x slower than 1 thread did.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, (cores or 1) - busy)


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@register_model(
    "demo_cnn",
    preprocess=DEMO_PREPROCESS,
    class_names=synthetic.CLASS_NAMES,
    description="small CNN for the 64x64 synthetic shapes (8 classes)",
)
def demo_cnn(num_classes: int = len(synthetic.CLASS_NAMES), width: int = 16) -> nn.Module:
    """The bare demo network: ``(N, 3, 64, 64)`` normalized input -> ``(N, num_classes)``.

    >>> demo_cnn()(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 8])
    """
    w = width
    return nn.Sequential(
        *_block(3, w, stride=2),
        *_block(w, 2 * w), nn.MaxPool2d(2),
        *_block(2 * w, 4 * w), nn.MaxPool2d(2),
        *_block(4 * w, 8 * w), nn.MaxPool2d(2),
        *_block(8 * w, 16 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16 * w, num_classes),
    )


TINY_PREPROCESS = dataclasses.replace(DEMO_PREPROCESS, resize=32, crop=32)  # whole frame at 32 px


@register_model(
    "demo_tiny_cnn",
    preprocess=TINY_PREPROCESS,
    class_names=synthetic.CLASS_NAMES,
    description="3 narrow conv stages at 32 px for the synthetic shapes (ironsight demo compare)",
)
def demo_tiny_cnn(num_classes: int = len(synthetic.CLASS_NAMES)) -> nn.Module:
    """Three narrow stages: ``(N, 3, 32, 32)`` normalized input -> ``(N, num_classes)``.

    >>> demo_tiny_cnn()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 8])
    """
    return nn.Sequential(
        *_block(3, 12), nn.MaxPool2d(2),
        *_block(12, 24), nn.MaxPool2d(2),
        *_block(24, 48), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )


def _separable(c_in: int, c_out: int) -> list[nn.Module]:
    """Depthwise 3x3 stride 2, then pointwise 1x1 (MobileNet v1's block)."""
    return [
        nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    ]


@register_model(
    "demo_separable_cnn",
    preprocess=DEMO_PREPROCESS,
    class_names=synthetic.CLASS_NAMES,
    description="MobileNet-like depthwise-separable CNN for the synthetic shapes (ironsight demo compare)",
)
def demo_separable_cnn(num_classes: int = len(synthetic.CLASS_NAMES)) -> nn.Module:
    """A conv stem and four depthwise-separable stride-2 stages: ``(N, 3, 64, 64)`` ->
    ``(N, num_classes)``.

    >>> demo_separable_cnn()(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 8])
    """
    return nn.Sequential(
        *_block(3, 16),
        *_separable(16, 32), *_separable(32, 64), *_separable(64, 128), *_separable(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


# name on the card -> (registered arch, builder); the input size is the arch's
COMPARE_MODELS = {"tiny_cnn": ("demo_tiny_cnn", demo_tiny_cnn),
                  "separable": ("demo_separable_cnn", demo_separable_cnn)}
COMPARE_TRAIN = 4000
COMPARE_EPOCHS = 6  # 375 steps; 3000 x 3 (140 steps) left the separable net at 37%


def _warmup_cosine(step: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over the first quarter, then cosine to zero.

    (OneCycleLR divides by zero when a tiny test budget leaves its warm-up 0 steps.)
    """
    warm = max(1, total // 4)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _jpeg_roundtrip(images: np.ndarray, qualities: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 through JPEG at the given qualities and back, as a corpus stores them."""
    out = np.empty_like(images)
    for i, (img, q) in enumerate(zip(images, qualities, strict=True)):
        blob = synthetic.encode(Image.fromarray(img), "jpeg", quality=int(q))
        out[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    return out


def _render(
    seed: int, n: int, progress: bool, desc: str, jpeg: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) uint8 images and (n,) int64 labels of synthetic split ``seed``.

    ``jpeg=(lo, hi)`` passes each image through JPEG at a quality drawn from [lo, hi]: corpora
    hold JPEGs, and a model trained only on pristine pixels loses about 10 points of accuracy
    on them (measured: 0.964 raw vs 0.863 after JPEG q90 with the same weights).
    """
    rng = np.random.default_rng([seed, 7])
    chunk = 500
    bar = None
    if progress:  # a bar on a terminal, a line every 10 s in a log
        from ironsight.cluster.progress import progress as progress_display

        bar = progress_display(n, None, desc=desc, noun="images")
    xs, ys = [], []
    for start in range(0, n, chunk):
        x, y = synthetic.render_arrays(seed, start, min(chunk, n - start), size=64)
        if jpeg is not None:
            x = _jpeg_roundtrip(x, rng.integers(jpeg[0], jpeg[1] + 1, len(x)))
        xs.append(x)
        ys.append(y)
        if bar is not None:
            bar.update(len(y))
    if bar is not None:
        bar.close()
    images = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.concatenate(ys))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-preserving, per image: flip, quarter turn, and a shuffle of the color channels.

    Shapes are drawn at random rotations and colors, so these only add nuisance variety.
    """
    n = x.shape[0]  # x: (N, 3, H, W) float32 in [0, 1]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    turns = torch.randint(4, (n,), generator=g)
    out = x.clone()
    for k in (1, 2, 3):
        sel = turns == k
        if sel.any():
            out[sel] = torch.rot90(x[sel], k, (2, 3))
    perm = torch.argsort(torch.rand(n, 3, generator=g), dim=1)  # (N, 3) channel order
    return torch.gather(out, 1, perm[:, :, None, None].expand_as(out))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (normalization inside) on uint8 ``images``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), 500):
        x = images[start : start + 500].float().div(255)  # (B, 3, 64, 64) float32 in [0, 1]
        correct += int((model(x).argmax(1) == labels[start : start + 500]).sum())
    return correct / len(labels)


def train_demo_model(
    out_dir: str,
    *,
    n_train: int = 8000,
    epochs: int = 4,
    n_eval: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[str, str, float]:
    """Train ``demo_cnn`` on CPU and write its weights and model card under ``out_dir``.

    The defaults take about a minute of training on 2 CPU cores (plus ~10 s to draw the
    images) and reach about 97% held-out accuracy (0.975 measured: 72 s of training on a
    shared 2-core machine, 10 s of drawing). Given ``seed``, the result is bit-for-bit
    reproducible (we measured identical weights with 1 and 2 threads; other thread counts
    or CPUs may round differently).

    Args:
        out_dir: local directory or ``s3://`` prefix; created if needed.
        n_train: training images (split seed 1), each seen ``epochs`` times, augmented.
        epochs: passes over the training images (warm-up, then cosine learning rate).
        n_eval: held-out images (split seed 2) for the returned accuracy.
        batch_size: images per optimizer step.
        lr: peak AdamW learning rate.
        seed: initialization, shuffling and augmentation seed.
        threads: torch CPU threads; default: the cores not already busy (see
            :func:`idle_cores`).
        progress: show progress on stderr (:mod:`ironsight.cluster.progress`: a bar on a
            terminal, a line every 10 s otherwise).

    Returns:
        ``(weights_uri, card_uri, eval_accuracy)``.
    """

    if n_train < batch_size:
        raise ValueError(f"n_train={n_train} must be at least batch_size={batch_size}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or idle_cores())  # restored below
    try:
        train_x, train_y = _render(TRAIN_SEED, n_train, progress, "drawing training images", jpeg=(70, 95))
        # held out at the corpus's own encoding (write_corpus: JPEG q90), so the accuracy
        # printed here is the one bulk labeling will see
        eval_x, eval_y = _render(EVAL_SEED, n_eval, progress, "drawing held-out images", jpeg=(90, 90))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = demo_cnn(len(synthetic.CLASS_NAMES))
        accuracy, train_seconds = _fit(net, DEMO_PREPROCESS, (train_x, train_y), (eval_x, eval_y),
                                       epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                       progress=progress, desc="training demo_cnn")
    finally:
        torch.set_num_threads(previous_threads)
    description = (f"demo_cnn trained on {n_train} synthetic images x {epochs} epochs (seed {seed}) in "
                   f"{train_seconds:.0f} s; held-out accuracy {accuracy:.3f} on {n_eval} images")
    weights_uri, card_uri = _save(out_dir, "demo_cnn", "demo_cnn", net, DEMO_PREPROCESS, description)
    return weights_uri, card_uri, accuracy


def _fit(
    net: nn.Module,
    p: Preprocess,
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
    desc: str,
) -> tuple[float, float]:
    """The demo recipe: AdamW, warm-up + cosine, flips/turns/channel shuffles, label smoothing.
    Trains ``net`` in place behind ``Normalize(p.mean, p.std)``; returns (held-out accuracy,
    training seconds)."""
    train_x, train_y = train
    n_train = len(train_y)
    model = nn.Sequential(Normalize(p.mean, p.std), net)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = n_train // batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(_warmup_cosine, total=epochs * steps_per_epoch)
    )
    bar = None
    if progress:
        from ironsight.cluster.progress import progress as progress_display

        bar = progress_display(epochs * steps_per_epoch, None, desc=desc, noun="steps")
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=g)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = _augment(train_x[idx].float().div(255), g)  # (B, 3, H, W) in [0, 1]
            # label smoothing keeps logits moderate, so softmax scores stay informative
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return evaluate(model, *held_out), seconds


def _save(out_dir: str, name: str, arch: str, net: nn.Module, p: Preprocess,
          description: str) -> tuple[str, str]:
    """Write ``<name>.safetensors`` (the bare net's state dict) and ``<name>.card.yaml`` under
    ``out_dir``; returns their URIs."""
    from safetensors.torch import save

    from ironsight.cluster.models.card import ModelCard

    out = storage.resolve(out_dir)
    storage.makedirs(out)
    weights_name = f"{name}.safetensors"
    weights_loc, card_loc = out.join(weights_name), out.join(f"{name}.card.yaml")
    storage.publish_bytes(weights_loc, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    card = ModelCard(
        name=name, format="safetensors", arch=arch, weights=weights_name, input_size=p.crop,
        resize=p.resize, mean=p.mean, std=p.std, interpolation=p.interpolation,
        class_names=list(synthetic.CLASS_NAMES), description=description,
    )
    storage.publish_bytes(card_loc, card.to_yaml().encode())
    return weights_loc.uri, card_loc.uri


def _downscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8, the whole frame resized with PIL's
    bilinear filter, as the decoder feeds a card with ``resize == input_size``."""
    if images.shape[-1] == size:
        return images
    out = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((size, size), Image.BILINEAR))
           for im in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def train_compare_models(
    out_dir: str,
    *,
    n_train: int = COMPARE_TRAIN,
    epochs: int = COMPARE_EPOCHS,
    n_eval: int = 500,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    names: tuple[str, ...] = tuple(COMPARE_MODELS),
) -> list[tuple[str, float]]:
    """Train the models of :data:`COMPARE_MODELS` with the demo recipe (batch 64, peak lr 3e-3)
    and write each as ``out_dir/<name>/<name>.safetensors`` + ``<name>.card.yaml``.

    The training and held-out images are drawn once (at 64 px, JPEG round-tripped as for the
    demo CNN) and downscaled for a model whose input is smaller.

    Returns:
        ``(card_uri, held_out_accuracy)`` per model, in ``names`` order.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or idle_cores())  # restored below
    try:
        train = _render(TRAIN_SEED, n_train, progress, "drawing training images", jpeg=(70, 95))
        held_out = _render(EVAL_SEED, n_eval, progress, "drawing held-out images", jpeg=(90, 90))
        out = []
        for name in names:
            arch, build = COMPARE_MODELS[name]
            p = get_model_info(arch).preprocess
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = build(len(synthetic.CLASS_NAMES))
            accuracy, seconds = _fit(
                net, p, (_downscale(train[0], p.crop), train[1]),
                (_downscale(held_out[0], p.crop), held_out[1]), epochs=epochs, batch_size=64,
                lr=3e-3, seed=seed, progress=progress, desc=f"training {name}")
            description = (f"{name} ({arch}) trained on {n_train} synthetic images x {epochs} epochs "
                           f"(seed {seed}) in {seconds:.0f} s; held-out accuracy {accuracy:.3f} "
                           f"on {n_eval} images")
            _, card_uri = _save(storage.resolve(out_dir).join(name).uri, name, arch, net, p, description)
            out.append((card_uri, accuracy))
        return out
    finally:
        torch.set_num_threads(previous_threads)


def ensure_compare_models(*, retrain: bool, progress: bool) -> list[Path]:
    """Card paths of the ``ironsight demo compare`` models (:data:`COMPARE_MODELS`), training
    those not cached under ``$IRONSIGHT_CACHE/demo_compare`` first (all of them with
    ``retrain``). The demo CNN itself is ``jobs.demo.ensure_demo_model``'s."""
    from ironsight.jobs.demo import cache_dir

    root = cache_dir() / "demo_compare"
    cards = {name: root / name / f"{name}.card.yaml" for name in COMPARE_MODELS}
    todo = tuple(n for n, card in cards.items() if retrain or not card.is_file())
    if not todo:
        print(f"using the cached comparison models: {', '.join(str(c) for c in cards.values())}")
        return list(cards.values())
    print(f"training {', '.join(todo)} on CPU for the comparison (a minute or two; cached for next time)...")
    started = time.monotonic()
    for card_uri, accuracy in train_compare_models(str(root), progress=progress, names=todo):
        print(f"  {Path(card_uri).name}: held-out accuracy {accuracy:.3f}")
    print(f"trained in {time.monotonic() - started:.0f}s")
    return list(cards.values())
