"""OpenVINO's checks (#43), run by test_export.py in a pytest process of their own (see there):
the IR is gated and predicts and serves as model.onnx does, and a run folder's model runs on
`--engine openvino` with ONNX Runtime's answers. Not collected by the suite itself (no test_ prefix)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

import transferkit
from helpers import make_dataset
from transferkit.cli import main
from transferkit.console import Console

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    run = transferkit.train(data, out=str(root / "run"), image_size=64, quiet=True).path
    return data, run, None


def test_openvino_ir_is_gated_and_predicts_and_serves_as_the_onnx_model_does(exported, tmp_path, capsys):
    from transferkit.prediction.exported import open_exported
    from transferkit.serving.model import ServedModel

    data, run, _ = exported
    result = transferkit.export(run, "openvino", out=str(tmp_path / "export"), runs=3, console=Console(True))
    onnx_check, ir_check = result.checks
    assert ir_check.format == "openvino" and ir_check.checked == "measured" and not result.failed
    assert ir_check.top1_agreement == 1.0 and ir_check.max_abs_logit_diff < 1e-4  # fp32, as ONNX Runtime's
    ir = tmp_path / "export" / "openvino_model"
    assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"]
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    on_onnx = open_exported(tmp_path / "export" / "model.onnx")
    for given in (ir, ir / "model.xml"):  # the IR's folder or its model.xml
        predictor = open_exported(given)
        assert predictor.kind == "openvino" and predictor.meta == on_onnx.meta  # the metadata rides in the IR
        np.testing.assert_allclose(predictor.run(np.stack([predictor.prepare(p) for p in images])),
                                   on_onnx.run(np.stack([on_onnx.prepare(p) for p in images])), atol=1e-4, rtol=0)
    capsys.readouterr()
    assert main(["predict", str(ir), *images[:3], "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["label"] for r in rows] == [p.label for p in on_onnx.predict(images[:3], top_k=2)]
    assert main(["predict", str(ir), images[0], "--engine", "torch"]) == 2  # an IR runs on OpenVINO only
    assert "exported OpenVINO model, which runs on OpenVINO" in capsys.readouterr().err
    served = ServedModel(ir)
    assert (served.info["format"], served.info["engine"], served.info["name"]) == ("openvino", "openvino",
                                                                                   "openvino_model")
    served.close()
    # a run folder's model on OpenVINO (--engine openvino): ONNX Runtime's conversion, the same answers
    with transferkit.load(run, engine="openvino") as ov, transferkit.load(run, engine="onnxruntime") as ort:
        assert ov.engine.engine == "openvino" and ov.engine.precision == "fp32"
        np.testing.assert_allclose([p.probability for p in ov.predict(images, top_k=1)],
                                   [p.probability for p in ort.predict(images, top_k=1)], atol=1e-4)


