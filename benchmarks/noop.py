"""What the driver benchmarks share (``driver_ceiling.py``, ``million_rows.py``).

| helper                | what it gives                                                          |
|-----------------------|------------------------------------------------------------------------|
| :func:`noop_source`   | a no-op classifier for the Python API: fixed logits, 10 classes, 8 px  |
| :func:`write_noop_card` | the same network as TorchScript + a model card, for ``ironsight classify --model-card`` |
| :func:`write_tiny_corpus` | N rows of tiny PNGs: a few hundred distinct images, their bytes repeated |
| :func:`rss_mb`, :class:`RssSampler` | a process's resident memory, once or every few seconds |
| :func:`moto_s3`       | a moto S3 server in its own process on loopback, and the env to reach it |
| :func:`write_results` | ``benchmarks/results/<name>-<UTC>.json`` and ``.md``                   |

The no-op network is ``Flatten -> Linear`` with zero weights: its logits are its bias whatever
the image, so every row gets the same top-5 and the model costs next to nothing. Only built-in
torch layers, so Ray pickles it by reference and any worker can load it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
NUM_CLASSES = 10
SIZE = 8  # pixels a side: the images are decoded at their own size, nothing is resized


def noop_module(num_classes: int = NUM_CLASSES, size: int = SIZE):
    """``Flatten -> Linear(3*size*size, num_classes)``, weights 0, bias descending: fixed logits.

    >>> import torch
    >>> noop_module()(torch.rand(2, 3, SIZE, SIZE)).argmax(1).tolist()
    [0, 0]
    """
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, num_classes))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.linspace(1.0, 0.0, num_classes))
    return net.eval()


def class_names(num_classes: int = NUM_CLASSES) -> tuple[str, ...]:
    return tuple(f"c{i}" for i in range(num_classes))


def noop_preprocess(size: int = SIZE):
    from ironsight.cluster.preprocess import Preprocess

    return Preprocess(resize=None, crop=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def noop_source(size: int = SIZE):
    """The no-op network as the Python API's in-memory model (:class:`ironsight.jobs.api.ModuleSource`)."""
    from ironsight.jobs.api import ModuleSource

    return ModuleSource(name="noop", module=noop_module(size=size), preprocess=noop_preprocess(size),
                        class_names=class_names())


def write_noop_card(folder: str, size: int = SIZE) -> str:
    """``noop.ts`` (TorchScript) and ``noop.yaml`` (its model card) in ``folder``; the card's path."""
    import warnings

    import torch

    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.14 deprecates scripting; the card format still loads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(noop_module(size=size)).save(os.path.join(folder, "noop.ts"))
    card = os.path.join(folder, "noop.yaml")
    with open(card, "w") as f:
        f.write(f"name: noop\nformat: torchscript\nweights: noop.ts\ninput_size: {size}\n"
                f"normalization_inside: true\nnum_classes: {NUM_CLASSES}\n"
                "description: fixed logits whatever the image (driver benchmarks)\n")
    return card


def tiny_pngs(distinct: int, size: int = SIZE) -> list[bytes]:
    """``distinct`` different ``size``-px PNGs of the synthetic corpus's shapes."""
    from ironsight.cluster import synthetic

    return [synthetic.encode(synthetic.render_image(7, i, size)[0], "png") for i in range(distinct)]


def write_tiny_corpus(folder: str, rows: int, *, distinct: int = 256, rows_per_file: int = 102_400,
                      row_group_size: int = 4096, size: int = SIZE) -> float:
    """Write ``rows`` rows (``id``, ``image``) of tiny PNGs as Parquet under ``folder``.

    Row ``i`` holds distinct image ``i % distinct``, so a million rows take seconds, not the
    minutes of rendering each. A folder already holding this corpus (``_tiny.json`` says so)
    is kept. Returns the seconds spent writing (0.0 when kept).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = os.path.join(folder, "_tiny.json")
    want = {"rows": rows, "distinct": distinct, "rows_per_file": rows_per_file,
            "row_group_size": row_group_size, "size": size}
    with contextlib.suppress(OSError, ValueError), open(stamp) as f:
        if json.load(f) == want:
            return 0.0
    started = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".parquet"):
            os.unlink(os.path.join(folder, name))
    blobs = pa.array(tiny_pngs(distinct, size), pa.binary())
    for n, start in enumerate(range(0, rows, rows_per_file)):
        index = np.arange(start, min(rows, start + rows_per_file))
        table = pa.table({"id": pa.array([f"img-{i:08d}" for i in index], pa.string()),
                          "image": blobs.take(pa.array(index % distinct))})
        pq.write_table(table, os.path.join(folder, f"part-{n:05d}.parquet"), row_group_size=row_group_size)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return time.perf_counter() - started


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (``VmRSS`` in ``/proc``); None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """``(seconds since start, MB)`` of one process every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 5.0) -> None:
        self.pid, self.interval = pid, interval
        self.started = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        mb = rss_mb(self.pid)
        if mb is not None:
            self.samples.append((round(time.monotonic() - self.started, 2), round(mb, 1)))

    def _run(self) -> None:
        self._take()
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A moto S3 server in a process of its own on 127.0.0.1 with ``bucket`` created.

    Yields the environment that points Ironsight (pyarrow's ``endpoint_override``) at it; the
    caller's ``os.environ`` is updated for the block and restored after. Its own process, so
    serving requests takes no CPU from the driver being measured (``local_s3.moto_server``).
    """
    from local_s3 import AWS_OVERRIDES, moto_env, moto_server, patched_environ

    with moto_server() as endpoint:
        env = moto_env(endpoint)
        with patched_environ(env, unset=AWS_OVERRIDES):
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield env


def utc_stamp() -> str:
    """``20261125T1930``: the results files' date-time, UTC."""
    return time.strftime("%Y%m%dT%H%M", time.gmtime())


def write_results(name: str, result: dict, markdown: str, *, folder: str = RESULTS,
                  stamp: str | None = None) -> str:
    """``folder/<name>-<UTC>.json`` (``result`` + the machine) and ``.md``; returns the stem."""
    sys.path.insert(0, HERE)
    from run_all import machine

    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"{name}-{stamp or utc_stamp()}")
    load = os.getloadavg()[0]
    info = {**machine(), "load_1min_at_end": round(load, 2)}
    with open(stem + ".json", "w") as f:
        json.dump({"machine": info, **result}, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown.rstrip() + f"\n\nMachine: {info['cpus']} CPUs, {info['memory']}, {info['gpu']}, "
                f"commit {info['commit']}; 1-min load average at the end {load:.1f}.\n")
    return stem
