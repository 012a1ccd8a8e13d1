"""Conditions on batches (robustness/conditions/batch.py): a batch gives what each image alone
gives, for every registered condition, batched definition or not."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ironsight.cluster.synthetic import render_image
from ironsight.robustness.conditions import apply_condition, get_condition, list_conditions
from ironsight.robustness.conditions.batch import BatchRng, corrupt_batch

torch = pytest.importorskip("torch")

KEYS = ("img-0", "img-1", "img-2", "img-3")


@functools.cache
def _images(size: int) -> np.ndarray:
    return np.stack([np.asarray(render_image(11, i, size)[0]) for i in range(len(KEYS))])


def _tensor(images: np.ndarray):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


@pytest.mark.parametrize("size", [48, 224])
@pytest.mark.parametrize("name", list_conditions())
def test_a_batch_equals_each_image_alone(name, size):
    images = _images(size)
    variants = dict(corrupt_batch(name, _tensor(images), (1, 3, 5), seed=3, keys=KEYS, threads=2))
    assert sorted(variants) == [1, 3, 5]
    for severity, v in variants.items():
        assert v.shape == (len(KEYS), 3, size, size) and v.dtype == torch.float32
        got = np.rint(v.permute(0, 2, 3, 1).numpy() * 255).astype(np.int16)
        for i, key in enumerate(KEYS):
            alone = apply_condition(name, images[i], severity, seed=3, key=key).astype(np.int16)
            diff = np.abs(got[i] - alone)
            # float rounding of a batch vs a batch of one may move a value across a grey level
            assert diff.max() <= 1 and diff.mean() < 0.01, (name, severity, key, diff.max(), diff.mean())


@pytest.mark.parametrize("name", [n for n in list_conditions() if get_condition(n).stochastic])
def test_the_order_of_the_batch_does_not_change_an_image(name):
    images = _images(48)
    order = [2, 0, 3, 1]
    a = dict(corrupt_batch(name, _tensor(images), (2,), seed=1, keys=KEYS))[2]
    b = dict(corrupt_batch(name, _tensor(images[order]), (2,), seed=1, keys=[KEYS[i] for i in order]))[2]
    assert torch.allclose(a[order], b, atol=1.5 / 255)


def test_batch_rng_replays_after_rewind_and_redraws_on_a_new_sequence():
    rng = BatchRng("c", ["a", "b"], seed=0)
    n1, u1 = rng.normal(2, 3), rng.rand(4)
    rng.rewind()
    assert torch.equal(rng.normal(2, 3), n1) and torch.equal(rng.rand(4), u1)
    rng.rewind()
    other = rng.rand(5)  # another call: drawn, not replayed
    assert other.shape == (2, 5)
    assert not torch.equal(BatchRng("c", ["a"], seed=1).rand(4)[0], u1[0])  # the seed matters
    assert not torch.equal(BatchRng("d", ["a"], seed=0).rand(4)[0], BatchRng("c", ["a"], seed=0).rand(4)[0])


def test_corrupt_batch_refuses_bad_severities_and_key_counts():
    x = _tensor(_images(48))
    with pytest.raises(ValueError, match="out of range"):
        list(corrupt_batch("contrast", x, (0,), seed=0, keys=KEYS))
    with pytest.raises(ValueError, match="3 keys for a batch of 4"):
        list(corrupt_batch("contrast", x, (1,), seed=0, keys=KEYS[:3]))
