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
