"""profile_model on CPU with tiny models: FLOPs equal the formulas, numbers are positive and
consistent, the RSS measure sees a known activation, failures give None with a reason."""

from __future__ import annotations

import doctest
import time

import pytest
import torch
from torch import nn

from ironsight.robustness import profiling
from ironsight.robustness.profiling import (
    ModelProfile,
    count_flops,
    cpu_peak_growth_mb,
    profile_model,
)


def _net(width: int, depth: int = 2) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))


def test_doctests_pass():
    result = doctest.testmod(profiling)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize(("cin", "cout", "k", "side"), [(3, 8, 3, 16), (4, 6, 5, 9), (3, 16, 1, 32)])
def test_flops_of_a_known_conv_equal_the_formula(cin, cout, k, side):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    flops, why = count_flops(conv, torch.zeros(1, cin, side, side))
    assert why is None
    assert flops == 2 * (cout * side * side) * (cin * k * k)  # 2 FLOPs per multiply-add


def test_flops_of_a_linear_layer():
    flops, _ = count_flops(nn.Linear(100, 7), torch.zeros(1, 100))
    assert flops == 2 * 100 * 7


def test_flops_none_with_a_reason_when_counting_fails_or_counts_nothing():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no forward here")

    flops, why = count_flops(Broken(), torch.zeros(1, 3, 4, 4))
    assert flops is None and "RuntimeError: no forward here" in why
    flops, why = count_flops(nn.ReLU(), torch.zeros(1, 3, 4, 4))
    assert flops is None and "knows none" in why


def test_profile_numbers_are_positive_and_consistent():
    p = profile_model(_net(8), 16, batch_sizes=(1, 4, 16), max_seconds=1.0, threads=1)
    assert isinstance(p, ModelProfile) and p.device == "cpu" and p.threads == 1
    assert p.params == sum(x.numel() for x in _net(8).parameters())
    assert p.flops_per_image > 2 * (8 * 16 * 16) * (3 * 9)  # at least the first conv
    assert 0 < p.latency_ms_p50 <= p.latency_ms_p95
    assert p.throughput_img_s > 0 and p.best_batch_size in (1, 4, 16)
    assert p.memory_kind == "rss_delta" and p.peak_memory_mb >= 0
    d = p.to_dict()
    assert set(d) >= {"device", "params", "flops_per_image", "latency_ms_p50", "latency_ms_p95",
                      "throughput_img_s", "best_batch_size", "peak_memory_mb", "memory_kind",
                      "threads"}
    assert isinstance(d["notes"], list)


def test_a_bigger_model_has_more_params_and_flops():
    small = profile_model(_net(4, depth=1), 16, batch_sizes=(1, 2), max_seconds=0.3)
    big = profile_model(_net(32, depth=3), 16, batch_sizes=(1, 2), max_seconds=0.3)
    assert big.params > 10 * small.params
    assert big.flops_per_image > 10 * small.flops_per_image


def test_cpu_peak_memory_sees_a_known_activation():
    # one 1x1 conv to 64 channels at 128 px, batch 16: the output alone is 64 MiB
    model = nn.Conv2d(3, 64, 1)
    p = profile_model(model, 128, batch_sizes=(16,), max_seconds=0.5, threads=1)
    assert p.best_batch_size == 16
    assert 48 <= p.peak_memory_mb <= 1024, p


def test_cpu_peak_growth_of_a_plain_allocation():
    mb, note = cpu_peak_growth_mb(lambda: torch.ones(40 * 2**20 // 4).sum())  # 40 MiB
    assert note is None  # Linux lets us reset the mark here
    assert 36 <= mb <= 200


def test_ru_maxrss_fallback_says_so(monkeypatch):
    monkeypatch.setattr(profiling, "_reset_hwm", lambda: False)
    mb, note = cpu_peak_growth_mb(lambda: None)
    assert mb >= 0 and "ru_maxrss" in note
    p = profile_model(_net(4), 8, batch_sizes=(1,), max_seconds=0.2)
    assert any("ru_maxrss" in n for n in p.notes)


def test_flops_failure_is_logged_and_noted(ironsight_log):
    # ironsight_log, not caplog: late in the full suite caplog missed these records
    p = profile_model(nn.Sequential(nn.Flatten(), nn.ReLU()), 8, batch_sizes=(1,), max_seconds=0.2)
    assert p.flops_per_image is None and any("FLOPs not counted" in n for n in p.notes)
    assert "FLOPs not counted" in ironsight_log.text


def test_time_budget_bounds_the_run_and_threads_are_restored():
    before = torch.get_num_threads()
    started = time.perf_counter()
    p = profile_model(_net(8), 16, batch_sizes=(1, 2, 4, 8), max_seconds=0.5, threads=1)
    assert time.perf_counter() - started < 5
    assert torch.get_num_threads() == before and p.threads == 1


@pytest.mark.parametrize("kwargs", [{"input_size": 0}, {"batch_sizes": ()}, {"batch_sizes": (0,)},
                                    {"max_seconds": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        profile_model(_net(4), **{"input_size": 8, **kwargs})
