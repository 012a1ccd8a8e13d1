"""Predictor on CPU: top-k output, error rows and torch threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ironsight.cluster.models import ModelSource
from ironsight.cluster.predictor import Predictor

SOURCE = ModelSource(name="demo_cnn", random_weights=True)


def batch(n: int, seed: int = 0, errors: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),  # (N, H, W, 3) uint8
        "error": np.array(["empty: zero-length image" if i in errors else None for i in range(n)], object),
        "id": np.array([f"r{i}" for i in range(n)], object),
        "shard": np.zeros(n, np.int64),
        "row": np.arange(n, dtype=np.int64),
    }


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_error_rows_keep_their_error_and_get_no_label():
    out = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=3)(batch(5, errors=(1, 3)))
    assert out["label"][[1, 3]].tolist() == [-1, -1] and (out["label"][[0, 2, 4]] >= 0).all()
    assert out["error"][1].startswith("empty:") and out["error"][0] is None
    assert out["topk_labels"].shape == (5, 3) and out["id"].tolist() == [f"r{i}" for i in range(5)]


def test_cpu_threads_set_torch_threads():
    Predictor(SOURCE, device="cpu", cpu_threads=1)(batch(4))
    assert torch.get_num_threads() == 1


@pytest.mark.slow  # compiling demo_cnn takes ~12 s of CPU
def test_torch_compile_gives_the_labels_and_scores_of_eager_mode():
    b = batch(16, seed=3, errors=(2,))
    eager = Predictor(SOURCE, device="cpu", cpu_threads=2, top_k=3)(b)
    compiled = Predictor(SOURCE, device="cpu", cpu_threads=2, top_k=3, torch_compile=True)
    assert type(compiled.model).__name__ == "OptimizedModule"
    out = compiled(b)
    assert out["label"].tolist() == eager["label"].tolist() and out["label"][2] == -1
    np.testing.assert_allclose(out["topk_scores"], eager["topk_scores"], atol=1e-5)
    short = compiled({k: v[:5] for k, v in b.items()})  # a shard's shorter last batch recompiles
    assert short["label"].tolist() == eager["label"][:5].tolist()


class OomAbove(torch.nn.Module):
    """The predictor's model, raising CUDA's out-of-memory error (constructible on CPU) for a
    batch of more than ``limit`` images, or for any batch holding an all-white image."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) float32 in [0, 1]
        self.sizes.append(len(x))
        white = x.flatten(1).amin(1) == 1.0
        if len(x) > self.limit or bool(white.any()):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_cuda_oom_splits_the_batch_and_gives_the_unsplit_results():
    b = batch(13, seed=5, errors=(4,))
    expected = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=3)(b)
    p = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=3)
    p.model = OomAbove(p.model, limit=3)
    out = p(b)
    assert out["error"].tolist() == expected["error"].tolist()  # only the decode error row
    assert out["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(out["topk_scores"], expected["topk_scores"], rtol=1e-5, atol=1e-6)
    assert max(s for s in p.model.sizes if s <= 3) == 3 and p.max_batch == 3
    # the next batch goes in chunks that fit, instead of running out of memory again first
    p.model.sizes.clear()
    again = p(b)
    assert max(p.model.sizes) <= 3 and again["label"].tolist() == expected["label"].tolist()


def test_only_a_single_image_that_still_runs_out_of_memory_becomes_an_error_row():
    b = batch(8, seed=6)
    b["image"][5] = 255  # OomAbove refuses any batch holding it, down to the image alone
    expected = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=2)(b)
    p = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=2)
    p.model = OomAbove(p.model, limit=100)
    out = p(b)
    assert out["error"][5].startswith("inference_failed: OutOfMemoryError: CUDA out of memory")
    assert out["label"][5] == -1 and (out["topk_labels"][5] == -1).all()
    rest = [i for i in range(8) if i != 5]
    assert all(out["error"][i] is None for i in rest)
    assert out["label"][rest].tolist() == expected["label"][rest].tolist()
    assert 1 in p.model.sizes  # it was split all the way down


def test_other_runtime_errors_still_fail_the_batch_without_splitting():
    class Broken(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Broken.calls += 1
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    p = Predictor(SOURCE, device="cpu", cpu_threads=1)
    p.model = Broken()
    out = p(batch(6, errors=(2,)))
    assert Broken.calls == 1 and out["error"][2].startswith("empty:")
    assert all(out["error"][i].startswith("inference_failed: RuntimeError: mat1") for i in (0, 1, 3, 4, 5))


def test_host_staging_allocates_once_over_batches_and_grows_only_for_a_larger_one():
    from ironsight.cluster.predictor import HostStaging

    sizes: list[int] = []

    def alloc(n: int) -> torch.Tensor:  # what pin_memory=True would lock, minus the locking
        sizes.append(n)
        return torch.empty(n, dtype=torch.uint8)

    staging = HostStaging(alloc=alloc)
    for n in (16, 16, 5, 16, 1):  # a shard's last batch is shorter
        images = batch(n, seed=n)["image"]
        staged = staging.stage(images)
        assert staged.shape == images.shape and np.array_equal(staged.numpy(), images)
    assert sizes == [16 * 64 * 64 * 3] and staging.allocations == 1
    big = batch(20, seed=1)["image"]
    assert np.array_equal(staging.stage(big).numpy(), big)
    assert sizes == [16 * 64 * 64 * 3, 20 * 64 * 64 * 3]
    staging.stage(batch(3)["image"])
    assert staging.allocations == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predictor_reuses_one_pinned_buffer():
    p = Predictor(SOURCE, device="cuda")
    outs = [p(batch(n, seed=n)) for n in (32, 32, 7, 32)]
    assert p.staging.allocations == 1 and p.staging._buf.is_pinned()
    assert all((o["label"] >= 0).all() for o in outs)


def test_a_float_tensor_on_the_device_is_predicted_as_its_uint8_images_and_split_on_oom():
    """Predictor.predict takes the images already on the device (an audit's variants): the
    same top-k as the uint8 batch, and a CUDA OOM splits the tensor as it splits a batch."""
    b = batch(9, seed=7, errors=(2,))
    expected = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=3)(b)
    p = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=3)
    p.model = OomAbove(p.model, limit=2)
    ok = np.array([e is None for e in b["error"]])
    x = p.to_device(b["image"][ok])
    assert isinstance(x, torch.Tensor) and x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    out = p.predict(x, b["error"])
    assert out["error"].tolist() == expected["error"].tolist()
    assert out["label"].tolist() == expected["label"].tolist() and out["label"][2] == -1
    np.testing.assert_allclose(out["topk_scores"], expected["topk_scores"], rtol=1e-5, atol=1e-6)
    assert p.max_batch == 2 and 8 in p.model.sizes  # tried whole, then split
    p.model.sizes.clear()
    again = p.predict(x, b["error"])  # the next tensor goes in chunks that fit
    assert max(p.model.sizes) <= 2 and again["label"].tolist() == expected["label"].tolist()
    nothing = p.predict(None, np.array(["empty: zero-length image"] * 2, object))  # no decoded row
    assert nothing["label"].tolist() == [-1, -1] and nothing["error"][0].startswith("empty:")


def test_batch_norms_are_folded_into_their_convolutions_and_answers_kept():
    """The predictor runs the model with each eval-mode batch-norm folded into the layer
    before it (fused_for_inference): no BatchNorm module left, the same classes and logits
    to float rounding; an untraceable model runs as loaded."""
    import torch
    from torch import nn

    from ironsight.cluster.predictor import fused_for_inference

    loaded = ModelSource(name="demo_cnn", random_weights=True).load("cpu").module.eval()
    p = Predictor(ModelSource(name="demo_cnn", random_weights=True), device="cpu", cpu_threads=1)
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in p.model.modules())
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    x = p.to_device(images)
    with torch.inference_mode():
        assert torch.allclose(p.model(x), loaded(x), atol=1e-4)

    class Branchy(nn.Module):
        def forward(self, x):
            return x.sum() if x.sum() > 0 else x  # data-dependent control flow: fx cannot trace it

    branchy = Branchy()
    assert fused_for_inference(branchy) is branchy
