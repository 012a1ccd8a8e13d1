"""Quiet by default: what a job prints on stderr when it is not a terminal (a log, CI, a pipe).

| run                              | stderr holds                                               |
|----------------------------------|------------------------------------------------------------|
| ``ironsight classify`` / ``audit`` | ``[ironsight] ...`` lines only: the preprocessing line, a progress line every 10 s and at the end; no Ray warning, no ``(raylet)`` or ``core_worker`` line, no ``Progress bars disabled``, no deprecation warning, no carriage return |
| ``ironsight demo``               | the same, and no tqdm bar of data generation or training   |
| ``ironsight -v classify``        | Ray's own lines as well (its execution plan among them)    |

Also: decode and predict stay two Ray Data operators without ``ray_remote_args_fn``
(``ironsight.cluster.engine.decode_task_args``), and the native-stderr filter of
``ironsight.cluster.raycluster`` drops Ray's C++ log lines and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import cli

FORBIDDEN = ("WARNING", "Warning:", "(raylet)", "core_worker", "Progress bars disabled", "Deprecat", "\r",
             "streaming_executor", "Traceback")


def _env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env["IRONSIGHT_HOME"] = str(tmp_path / "home")  # no run history of other tests (abandoned-run warnings)
    for name in ("RAY_BACKEND_LOG_LEVEL", "RAY_DATA_LOG_LEVEL", "IRONSIGHT_LOG_FORMAT"):
        env.pop(name, None)
    return env


def _assert_quiet(stderr: str) -> list[str]:
    for word in FORBIDDEN:
        assert word not in stderr, f"{word!r} on stderr:\n{stderr[-3000:]}"
    lines = [line for line in stderr.split("\n") if line.strip()]
    strays = [line for line in lines if not line.startswith("[ironsight] ")]
    assert not strays, f"lines that are not Ironsight's: {strays}"
    return lines


@pytest.mark.cluster
def test_classify_prints_only_its_own_lines_and_with_v_rays_too(synthetic_corpus, tmp_path):
    corpus = synthetic_corpus(100, rows_per_file=50, row_group_size=25)
    run = cli("classify", corpus, str(tmp_path / "out"), "--model", "demo_cnn", "--random-weights",
              env=_env(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = _assert_quiet(run.stderr)
    assert lines[0].startswith("[ironsight] model demo_cnn:")
    assert lines[-1].startswith("[ironsight] 100/100 rows (100%)")  # progress as lines, not a bar
    assert "labeled 100 rows" in run.stdout

    loud = cli("-v", "classify", corpus, str(tmp_path / "out-v"), "--model", "demo_cnn", "--random-weights",
               env=_env(tmp_path))
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "streaming_executor" in loud.stderr  # Ray Data's own log lines come back with -v
    # ... among them the executed plan: decode tasks and predictor actors, two operators
    assert ("TaskPoolMapOperator[MapBatches(read_and_decode)] -> ActorPoolMapOperator[MapBatches(Predictor)]"
            in loud.stderr), loud.stderr[-3000:]


@pytest.mark.cluster
def test_audit_prints_only_its_own_lines_with_a_progress_line(synthetic_corpus, tmp_path):
    eval_set = synthetic_corpus(24, rows_per_file=24, row_group_size=12)
    run = cli("audit", eval_set, str(tmp_path / "out"), "--model", "demo_cnn", "--random-weights",
              "--suite", "quick", "--max-images", "24", env=_env(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = _assert_quiet(run.stderr)
    done = [line for line in lines if line.startswith("[ironsight] auditing: ")]
    assert done and " (100%)" in done[-1] and "predictions/s" in done[-1], lines


@pytest.mark.cluster
def test_demo_writes_no_bars_and_no_ray_lines_into_a_log(tmp_path):
    env = _env(tmp_path) | {"IRONSIGHT_CACHE": str(tmp_path / "cache")}  # trains a (tiny) model
    run = cli("demo", "--workdir", str(tmp_path / "demo"), "--corpus-size", "100", "--eval-size", "50",
              "--train-size", "200", "--audit-images", "20", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = _assert_quiet(run.stderr)  # no tqdm bar of data generation or training either
    assert any(line.startswith("[ironsight] 100/100 rows (100%)") for line in lines), lines
    assert any(line.startswith("[ironsight] auditing: ") and "(100%)" in line for line in lines), lines
    assert "trained in" in run.stdout and "report:" in run.stdout


def _ident(batch):
    return batch


class _Ident:
    def __call__(self, batch):
        return batch


def _operators(decode_args: dict) -> str:
    import ray.data
    from ray.data import ActorPoolStrategy

    from ironsight.cluster.engine import plan_resources

    res = plan_resources(None, "auto", resources={"CPU": 2.0})
    assert res["num_cpus"] == 1.0  # the case that fuses: the predictors' args equal num_cpus=1
    ds = ray.data.from_items([{"x": i} for i in range(4)], override_num_blocks=2)
    ds = ds.map_batches(_ident, batch_size=1, **decode_args).map_batches(
        _Ident, compute=ActorPoolStrategy(size=1), num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], batch_size=2)
    assert len(ds.take_all()) == 4
    return ds.stats()


@pytest.mark.cluster
def test_decode_and_predict_stay_separate_operators_on_two_cpus(ray_cpu):
    from ironsight.cluster.engine import decode_task_args

    assert "ray_remote_args_fn" not in decode_task_args()
    separate = _operators(decode_task_args())
    assert "MapBatches(_ident)->MapBatches(_Ident)" not in separate
    assert "MapBatches(_ident)" in separate and "MapBatches(_Ident)" in separate
    # the control: one CPU and nothing else, and Ray fuses decoding into the actors
    assert "MapBatches(_ident)->MapBatches(_Ident)" in _operators({"num_cpus": 1})


def test_the_native_stderr_filter_drops_rays_cpp_log_lines_only():
    code = textwrap.dedent(
        """
        import os, sys
        from ironsight.cluster.raycluster import _quiet_native_stderr
        with _quiet_native_stderr(True):
            os.write(2, b"[2026-11-25 16:37:53,911 E 4467 4467] core_worker.cc:2465: Actor ...\\n")
            os.write(2, b"kept from C\\n[2026-11-25 16:37:53,912 I 1 2] logging.cc:303: Set ray log level\\n")
            print("kept from Python", file=sys.stderr)
            os.write(2, b"no newline at the end")
        print("after", file=sys.stderr)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "core_worker" not in run.stderr and "logging.cc" not in run.stderr
    assert sorted(run.stderr.replace("no newline at the end", "no newline at the end\n").split("\n")) == sorted(
        ["kept from C", "kept from Python", "no newline at the end", "after", ""]
    ), run.stderr
