"""--strategy scratch and the CIFAR-10 python-format reader (tiny batches in that exact format)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import transferkit
from transferkit.data.discover import discover

CLASSES = ["blue", "red", "green"]
COLORS = np.array([(30, 60, 200), (200, 40, 30), (40, 180, 60)])


def write_batch(path: Path, n: int, seed: int, name: bytes) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 python batch: a protocol-2 pickle of a dict with bytes keys, `data` uint8
    (N, 3072) in channel-major order (1024 red, 1024 green, 1024 blue), `labels` a list of ints."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    images = np.clip(COLORS[labels][:, None, None, :] + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    batch = {b"batch_label": name, b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return images, labels


def make_cifar(root: Path, per_batch: int = 12) -> dict:
    root.mkdir(parents=True)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    out = {}
    for i in (1, 2):
        out[f"data_batch_{i}"] = write_batch(root / f"data_batch_{i}", per_batch, i, f"training batch {i} of 2".encode())
    out["test_batch"] = write_batch(root / "test_batch", per_batch, 9, b"testing batch 1 of 1")
    return out


def test_cifar_batches_are_detected_and_read_pixel_exact(tmp_path):
    written = make_cifar(tmp_path / "cifar-10-batches-py")
    split = discover(tmp_path, datasets_dir=tmp_path / "cache" / "datasets")  # the parent folder works too
    assert split.classes == sorted(CLASSES) and split.image_size == 32
    assert len(split.train) == 24 and len(split.val) == 12 and split.val_source == "folder"
    images, labels = written["data_batch_2"]
    sample = next(s for s in split.train if s.path.endswith("data_batch_2_00004.png"))
    assert split.classes[sample.label] == CLASSES[labels[4]]
    assert np.array_equal(np.asarray(Image.open(sample.path)), images[4])
    again = discover(tmp_path / "cifar-10-batches-py", datasets_dir=tmp_path / "cache" / "datasets")
    assert [s.path for s in again.train] == [s.path for s in split.train]  # made once, reused


def test_cifar_reader_refuses_a_pickle_that_runs_code(tmp_path):
    root = tmp_path / "c"
    make_cifar(root)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(transferkit.UserError, match=r"data_batch_1: not a CIFAR-10 python batch \(refused"):
        discover(root, datasets_dir=tmp_path / "cache" / "datasets")
    assert not marker.exists() and not list((tmp_path / "cache" / "datasets").glob("cifar10-*"))


def test_scratch_trains_a_cifar_resnet_from_random_weights(tmp_path):
    data = tmp_path / "cifar"
    make_cifar(data)
    run = transferkit.train(data, strategy="scratch", model="resnet18", epochs=2, batch_size=8,
                            out=str(tmp_path / "r"), quiet=True)
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert (cfg["weights"], cfg["optimizer"], cfg["schedule"], cfg["lr"]) == ("none", "sgd", "onecycle", 0.1)
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["stem"] == "small" and meta["preprocess"]["input_size"] == 32 and meta["weights"] == "none"
    groups = run.results["strategy_info"]["param_groups"]
    assert {g["name"]: g["lr"] for g in groups} == {"backbone": 0.1, "head": 0.1}  # every layer at lr
    model = transferkit.load(run.path, engine="torch").model
    conv1 = model.backbone.conv1
    assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
    assert type(model.backbone.maxpool).__name__ == "Identity"
    again = transferkit.evaluate(run.path)
    assert again["accuracy"] == pytest.approx(run.val_acc, abs=1e-9)


def test_scratch_refuses_a_weights_file(tmp_path):
    with pytest.raises(transferkit.UserError, match="scratch trains from random weights"):
        transferkit.train(tmp_path, strategy="scratch", weights=str(tmp_path / "w.pt"))
