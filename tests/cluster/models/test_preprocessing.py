"""Resolved preprocessing: whole frame for cards without arch, torchvision's weight versions,
and an audit whose clean accuracy equals an independent computation on the same pixels."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

from ironsight.cluster.decode import decode_image
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelCard, ModelSource, get_model_info
from ironsight.cluster.preprocess import Preprocess
from ironsight.jobs.cli import main
from ironsight.jobs.spec import AuditJob, ClassifyJob

REPO = Path(__file__).resolve().parents[3]


# --- the registry: torchvision's weight versions ---------------------------------------------


def test_resnet50_defaults_to_torchvision_default_weights_v2():
    p = get_model_info("resnet50").preprocess
    assert (p.resize, p.crop, p.interpolation, p.weights_version) == (232, 224, "bilinear", "IMAGENET1K_V2")
    # exactly what torchvision's DEFAULT (the weights `weights="DEFAULT"` fetches) says
    t = torchvision.models.get_model_weights("resnet50").DEFAULT.transforms()
    assert torchvision.models.get_model_weights("resnet50").DEFAULT.name == p.weights_version
    assert (p.resize, p.crop) == (t.resize_size[0], t.crop_size[0])
    assert p.mean == tuple(t.mean) and p.std == tuple(t.std)


def test_resnet50_v1_on_request():
    p = get_model_info("resnet50", "IMAGENET1K_V1").preprocess
    assert (p.resize, p.crop, p.interpolation, p.weights_version) == (256, 224, "bilinear", "IMAGENET1K_V1")
    loaded = ModelSource("resnet50", random_weights=True, weights_version="IMAGENET1K_V1").validate()
    assert loaded.info.preprocess == p


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_V1, IMAGENET1K_SWAG_LINEAR_V1"),  # 384 px
        ("vgg16", "IMAGENET1K_FEATURES", "choose one of IMAGENET1K_V1"),  # no classifier
        ("resnet50", "IMAGENET1K_V3", "IMAGENET1K_V2, IMAGENET1K_V1"),
        ("demo_cnn", "IMAGENET1K_V1", "no torchvision weight versions"),
    ],
)
def test_unknown_weight_versions_are_refused(name, version, message):
    with pytest.raises(InvalidInput, match=message):
        get_model_info(name, version)


def test_models_show_prints_the_weights_version_and_resolved_preprocessing(capsys):
    assert main(["models", "show", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "torchvision IMAGENET1K_V2 (DEFAULT)" in out
    assert "shorter side to 232" in out and "224x224 (center crop)" in out
    assert main(["models", "show", "resnet50", "--weights-version", "IMAGENET1K_V1"]) == 0
    out = capsys.readouterr().out
    assert "torchvision IMAGENET1K_V1;" in out and "shorter side to 256" in out
    assert main(["models", "show", "resnet50", "--weights-version", "V9"]) == 2


def test_weights_version_flag_reaches_the_model_source():
    job = ClassifyJob(input="in", output="out", model="resnet50", random_weights=True,
                      weights_version="IMAGENET1K_V1")
    assert job.source().weights_version == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="a model card sets `weights_version` itself"):
        AuditJob(input="in", output="out", model_card=__file__, weights_version="IMAGENET1K_V1")


# --- model cards ---------------------------------------------------------------------------

REQUIRED = {"name": "tiny32", "format": "torch_export", "weights": "m.pt2", "input_size": 32,
            "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": ["a", "b"]}


def test_card_without_arch_sees_the_whole_frame():
    p = ModelCard(**REQUIRED).preprocess()
    assert (p.resize, p.crop, p.mode) == (None, 32, "whole_frame")
    assert "whole frame resized to 32x32 (no crop)" in p.summary()


def test_card_asks_for_a_crop_with_resize():
    p = ModelCard(**REQUIRED, resize=37).preprocess()
    assert (p.resize, p.crop, p.mode) == (37, 32, "resize_center_crop")


def test_card_weights_version():
    base = {"name": "r", "format": "safetensors", "arch": "resnet50", "weights": "r.safetensors"}
    assert ModelCard(**base).preprocess() == get_model_info("resnet50").preprocess
    assert ModelCard(**base, weights_version="IMAGENET1K_V1").preprocess().resize == 256
    # a card that changes the official values does not claim the version's name
    assert ModelCard(**base, mean=[0.5] * 3).preprocess().weights_version is None
    with pytest.raises(ValueError, match="IMAGENET1K_V2, IMAGENET1K_V1"):
        ModelCard(**base, weights_version="IMAGENET1K_V7")
    with pytest.raises(ValueError, match="set `arch`"):
        ModelCard(**REQUIRED, weights_version="IMAGENET1K_V1")


# --- decoding the whole frame --------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(50, 30), (30, 50), (32, 32), (17, 90)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_whole_frame_matches_torchvision_resize_to_a_square(size, interpolation):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    got = decode_image(_png(img), Preprocess(resize=None, crop=32, interpolation=interpolation))
    want = np.asarray(Resize((32, 32), InterpolationMode(interpolation))(img))
    np.testing.assert_array_equal(got, want)
    cropped = np.asarray(Compose([Resize(32), CenterCrop(32)])(img))
    if size != (32, 32):
        assert not np.array_equal(got, cropped)  # the crop would have cut part of the frame


def test_whole_frame_of_a_rotated_and_a_large_jpeg():
    rng = np.random.default_rng(0)
    base = Image.fromarray(np.kron(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8),
                                   np.ones((20, 20, 1), np.uint8)))  # 800x400 blocks
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: upright is rotated 90 degrees clockwise
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=95, exif=exif)
    got = decode_image(buf.getvalue(), Preprocess(resize=None, crop=32)).astype(float)
    upright = base.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 displays as
    want = np.asarray(Resize((32, 32))(upright), dtype=float)
    assert got.shape == (32, 32, 3)
    assert np.abs(got - want).mean() < 4  # JPEG loss and the DCT-domain draft only


# --- the done-when: a 32-px model audited through the CLI ----------------------------------

GRID = 4  # 4x4 cells of 8x8 pixels; class k = the cell with the brightest mean
CELL = 8
BORDER_CELLS = [(r, c) for r in range(GRID) for c in range(GRID) if r in (0, GRID - 1) or c in (0, GRID - 1)]


class CellMeans(nn.Module):
    """Logit k = mean of cell k of a 32x32 image (channels summed): a fixed, tiny classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(CELL)
        self.head = nn.Linear(3 * GRID * GRID, GRID * GRID, bias=False)
        with torch.no_grad():
            w = torch.zeros(GRID * GRID, 3, GRID * GRID)
            for k in range(GRID * GRID):
                w[k, :, k] = 1.0
            self.head.weight.copy_(w.reshape(GRID * GRID, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 32, 32) normalized
        return self.head(self.pool(x).flatten(1))


def _eval_image(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A dark 32x32 frame, a bright strip on the frame's edge in a border cell (the label) and
    a distractor of random brightness in an inner cell: the label wins unless it is brighter."""
    img = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
    r, c = BORDER_CELLS[rng.integers(len(BORDER_CELLS))]
    y0, x0 = r * CELL, c * CELL
    if r == 0:
        img[0:3, x0 + 1:x0 + 7] = 215
    elif r == GRID - 1:
        img[29:32, x0 + 1:x0 + 7] = 215
    elif c == 0:
        img[y0 + 1:y0 + 7, 0:3] = 215
    else:
        img[y0 + 1:y0 + 7, 29:32] = 215
    ir, ic = rng.integers(1, GRID - 1, 2)
    img[ir * CELL + 2:ir * CELL + 5, ic * CELL + 1:ic * CELL + 7] = rng.integers(140, 256)
    return img, r * GRID + c


def _direct_predictions(model_path: Path, blobs: list[bytes]) -> np.ndarray:
    """Independent of Ironsight: torch.export.load, PIL resize to 32x32 (no crop), normalize."""
    net = torch.export.load(str(model_path)).module()
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((32, 32), Image.BILINEAR))
                  for b in blobs])
    t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        return net(t).argmax(1).numpy()


@pytest.mark.cluster
def test_a_32px_card_audits_to_the_accuracy_of_a_direct_computation(tmp_path):
    model_path = tmp_path / "cells.pt2"
    program = torch.export.export(CellMeans().eval(), (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(model_path))
    card = tmp_path / "card.yaml"  # only the required keys: no arch, no resize
    card.write_text(
        "name: cells32\nformat: torch_export\nweights: cells.pt2\ninput_size: 32\n"
        "mean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n"
        f"class_names: [{', '.join(f'r{k // GRID}c{k % GRID}' for k in range(GRID * GRID))}]\n"
    )
    rng = np.random.default_rng(11)
    images, labels = zip(*(_eval_image(rng) for _ in range(160)), strict=True)
    blobs = [_png(Image.fromarray(img)) for img in images]
    ids = [f"img-{i:04d}" for i in range(len(blobs))]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary()), "label": list(labels)}),
                   eval_dir / "part-0.parquet")
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: one\nconditions: [occlusion]\nseverities: [1]\n")

    direct = _direct_predictions(model_path, blobs)
    accuracy = float((direct == np.asarray(labels)).mean())
    # The eval set tells the geometries apart: the old silent 37 -> crop 32 changes predictions.
    old = Preprocess(resize=37, crop=32)
    cropped = np.stack([decode_image(b, old) for b in blobs])
    t = (torch.from_numpy(cropped).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        accuracy_cropped = float((CellMeans()(t).argmax(1).numpy() == np.asarray(labels)).mean())
    assert 0.5 < accuracy < 1.0 and accuracy - accuracy_cropped > 0.1

    out = tmp_path / "audit"
    result = subprocess.run(
        [sys.executable, "-m", "ironsight.jobs.cli", "audit", str(eval_dir), str(out),
         "--model-card", str(card), "--suite", str(suite), "--actors", "1", "--no-progress"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    start = [line for line in result.stderr.splitlines() if "model cells32:" in line]
    assert len(start) == 1 and "whole frame resized to 32x32 (no crop)" in start[0], result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["clean"]["n"] == len(blobs)
    assert report["clean"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert report["preprocessing"] == {
        "mode": "whole_frame", "resize": None, "crop": 32, "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "weights_version": None,
    }
    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    audited = {r["id"]: r["prediction"] for r in rows if r["kind"] == "clean"}
    assert audited == dict(zip(ids, direct.tolist(), strict=True))  # image by image
