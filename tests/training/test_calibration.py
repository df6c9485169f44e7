"""Calibrated confidence (issue 40, first part): a temperature fitted on the head's out-of-fold
logits of the training images (never the val images), kept only where it measurably helps,
stored in model.json and every export's metadata, applied wherever probabilities leave the tool;
ECE, NLL and Brier before and after in metrics.json, a reliability diagram in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import make_dataset
from transferkit.task import TEMPERATURE_RANGE, Task, calibration, fit_temperature

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)


def _drawn(temperature: float, n: int = 600, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): that temperature calibrates them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 3
    p = np.exp(z / temperature)
    p /= p.sum(1, keepdims=True)
    return np.array([rng.choice(4, p=row) for row in p]), z


@pytest.mark.parametrize("true", [0.5, 1.0, 2.5])
def test_the_temperature_found_is_the_one_the_labels_were_drawn_at(true):
    y, z = _drawn(true)
    found = fit_temperature(y, z)
    assert found == pytest.approx(true, rel=0.2)
    before, after = (calibration(y, Task(temperature=t).probabilities(z)) for t in (1.0, found))
    if true != 1.0:
        assert after["ece"] < before["ece"] and after["nll"] < before["nll"]


def test_ece_nll_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    cal = calibration(y, probs)
    # two bins: 0.9 confident, half right (gap 0.4); 0.6 confident, all right (gap 0.4)
    assert cal["ece"] == pytest.approx(0.4)
    assert cal["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])), abs=1e-5)
    assert cal["brier"] == pytest.approx(np.mean([0.02, 1.62, 0.32, 0.32]), abs=1e-5)
    assert [b["count"] for b in cal["bins"]] == [2, 2]


def test_views_are_averaged_as_calibrated_probabilities_and_a_bad_temperature_is_refused():
    task = Task(temperature=2.0)
    views = np.random.default_rng(1).normal(size=(3, 2, 4)) * 4
    np.testing.assert_allclose(task.probabilities(task.mean_of_views(views)),
                               task.probabilities(views.reshape(-1, 4)).reshape(3, 2, 4).mean(1), atol=1e-6)
    for bad in (0, -1, TEMPERATURE_RANGE[1] * 2, True, "2"):
        with pytest.raises(ValueError):
            Task.from_dict({"kind": "single", "temperature": bad}, 3)


def test_a_run_reports_its_calibration_and_every_predictor_applies_its_temperature(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    run = Path(transferkit.train(data, out=str(tmp_path / "run"), **TINY).path)
    metrics = json.loads((run / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert {"temperature", "before", "after"} <= set(cal) and cal["before"]["ece"] is not None
    assert (run / "reliability.png").is_file() and "ECE (15 bins)" in (run / "report.html").read_text()
    # a run whose model.json holds a temperature: the predictions are softmax(logits / T)
    meta = json.loads((run / "model.json").read_text())
    meta["task"]["temperature"] = 3.0
    (run / "model.json").write_text(json.dumps(meta))
    image = str(next((data / "val" / "red").iterdir()))
    with transferkit.load(run, engine="torch", precision="fp32") as model:  # (the ONNX file runs in fp32)
        logits, _ = model.logits([image])
        got = {c: p for c, p in model.predict([image], top_k=3)[0].top_k}
    want = np.exp(logits[0] / 3.0) / np.exp(logits[0] / 3.0).sum()
    assert [got[c] for c in model.classes] == pytest.approx(want.tolist(), abs=1e-5)
    transferkit.export(run, "onnx", runs=1, out=str(tmp_path / "export"))
    exported = json.loads((tmp_path / "export" / "export.json").read_text())["metadata"]["task"]
    assert exported["temperature"] == 3.0
    from transferkit.prediction.onnx_predictor import OnnxPredictor

    onnx = OnnxPredictor(tmp_path / "export" / "model.onnx")
    assert onnx.task.temperature == 3.0
    assert onnx.predict([image], top_k=1)[0].probability == pytest.approx(max(want), abs=1e-4)
