"""Export: ONNX equals PyTorch, metadata round-trips, the INT8 accuracy gate, torch-free predict."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from helpers import make_dataset
from transferkit.exporting import exporter, registry
from transferkit.models import bundle
from transferkit.console import Console
from transferkit.cli import main
from transferkit.prediction.onnx_predictor import OnnxPredictor, read_metadata

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    run = transferkit.train(data, out=str(root / "run"), image_size=64, quiet=True).path
    result = transferkit.export(run, "onnx,torchscript", runs=3, console=Console(True))
    return data, run, result


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_onnx_matches_pytorch_and_carries_the_preprocessing(exported):
    data, run, result = exported
    onnx_check, ts_check = result.checks
    assert (onnx_check.format, ts_check.format) == ("onnx", "torchscript") and not result.failed
    model, meta, _ = bundle.load(run)
    meta_onnx = read_metadata(run / "export" / "model.onnx")
    assert meta_onnx == json.loads(json.dumps(exporter.metadata(meta)))  # round-trips exactly
    assert meta_onnx["classes"] == ["blue", "green", "red"]
    assert meta_onnx["preprocess"]["input_size"] == 64 and meta_onnx["preprocess"]["mean"] == list(meta.preprocess.mean)
    # the same preprocessed batch through both: fp32 logits within 1e-4, any batch size
    predictor = OnnxPredictor(run / "export" / "model.onnx")
    paths = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    x = np.stack([predictor.prepare(p) for p in paths])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor.run(x), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(predictor.run(x[:1]), expected[:1], atol=1e-4, rtol=0)
    assert onnx_check.top1_agreement == 1.0 and onnx_check.max_abs_logit_diff < 1e-4
    extra = {"transferkit.json": ""}
    torch.jit.load(str(run / "export" / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["transferkit.json"]) == meta_onnx
    saved = json.loads((run / "export" / "export.json").read_text())
    assert saved["reference"]["latency_ms_p50"] > 0 and saved["artifacts"][0]["throughput_b32"] > 0
    assert set(saved["artifacts"][0]["per_class_accuracy"]) == {"blue", "green", "red"}


def test_int8_gate_trips_when_max_drop_is_below_the_measured_drop(exported, capsys, monkeypatch):
    _, run, _ = exported
    out = run / "int8"
    assert main(["export", str(run), "--format", "int8", "--calib", "8", "--runs", "1", "--max-drop", "100",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "export.json").read_text())
    int8 = next(a for a in saved["artifacts"] if a["format"] == "int8")
    assert int8["passed"] and (out / "model.int8.onnx").is_file() and saved["calibration_images"] == 8
    assert int8["size_mb"] < next(a for a in saved["artifacts"] if a["format"] == "onnx")["size_mb"]
    capsys.readouterr()
    if int8["accuracy_drop_pt"] < 1:
        # this INT8 model loses (almost) nothing: make its checked predictions wrong so a drop exists
        import dataclasses

        fmt = registry.FORMATS.get("int8")

        def shifted(path):
            run_batch = fmt.runner(path)
            return lambda x: np.roll(run_batch(x), 1, axis=1)

        monkeypatch.setitem(registry.FORMATS._entries, "int8", dataclasses.replace(fmt, runner=shifted))
        int8["accuracy_drop_pt"] = 50.0
    limit = int8["accuracy_drop_pt"] - 0.5
    assert main(["export", str(run), "--format", "int8", "--calib", "8", "--runs", "1", "--max-drop", str(limit),
                 "--out", str(out)]) == 1
    assert "int8: " in capsys.readouterr().err
    assert (out / "model.int8.FAILED.onnx").is_file() and not (out / "model.int8.onnx").exists()
    saved = json.loads((out / "export.json").read_text())
    assert [a["passed"] for a in saved["artifacts"] if a["format"] == "int8"] == [False]


def test_predict_from_onnx_runs_where_torch_cannot_be_imported(exported, tmp_path):
    data, run, _ = exported
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    script = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "torchvision", "timm")):
                    raise ImportError("torch is not installed (blocked by the test)")
        sys.meta_path.insert(0, NoTorch())
        from transferkit.cli import main
        code = main(sys.argv[1:])
        assert "torch" not in sys.modules
        sys.exit(code)
    """)
    proc = subprocess.run([sys.executable, "-c", script, "predict", str(run / "export" / "model.onnx"),
                           *images, str(tmp_path / "broken.jpg"), "--top-k", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(images) + 1 and rows[-1]["error"] and "broken.jpg" in proc.stderr
    expected = transferkit.load(run, precision="fp32").predict(images, top_k=2)
    assert [r["label"] for r in rows[:-1]] == [p.label for p in expected]
    np.testing.assert_allclose([float(r["probability"]) for r in rows[:-1]], [p.probability for p in expected],
                               atol=1e-4)


def test_bad_export_options_are_one_line_errors(exported, capsys):
    _, run, _ = exported
    assert main(["export", str(run), "--format", "gif"]) == 2
    assert "choose from onnx, torchscript, int8" in capsys.readouterr().err
    assert registry.parse_formats("int8") == ["onnx", "int8"]  # INT8 quantizes the ONNX model
    assert main(["predict", str(run / "missing.onnx"), str(run / "model.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(run)]) == 2  # a folder of other files is never written into
    assert "is not an export folder" in capsys.readouterr().err


def test_mlflow_flavour_loads_predicts_images_and_serves(exported, tmp_path):
    """export --format mlflow: an MLflow pyfunc model folder, checked like every format; loaded by
    mlflow.pyfunc it answers paths, bytes, base64 strings, DataFrames and tensors as the ONNX file
    does; `mlflow models serve` serves it offline."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (make test installs it)")
    import base64

    import mlflow.pyfunc
    import pandas as pd

    data, run, _ = exported
    assert "mlflow" not in registry.parse_formats("all")  # an extra's format: built when named
    result = transferkit.export(run, "mlflow", runs=2, out=tmp_path / "exp", console=Console(True))
    (check,) = [c for c in result.checks if c.format == "mlflow"]
    assert check.passed and check.file == "mlflow_model" and check.top1_agreement == 1.0
    assert check.max_abs_logit_diff < 1e-4 and check.size_mb > 0.5  # the folder, model.onnx inside
    folder = tmp_path / "exp" / "mlflow_model"
    model = mlflow.pyfunc.load_model(str(folder))
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    onnx = OnnxPredictor(tmp_path / "exp" / "model.onnx")
    expected = onnx.predict(images, top_k=3)
    by_path = model.predict(images)
    assert list(by_path.columns) == ["label", "probability", "probabilities", "logits", "error", "ood_score", "unknown"]
    assert by_path["label"].tolist() == [p.label for p in expected]
    np.testing.assert_allclose(by_path["probability"], [p.probability for p in expected], atol=1e-6)
    raw = [open(p, "rb").read() for p in images[:2]]
    frame = model.predict(pd.DataFrame({"image": raw + [b"not an image"]}))
    assert frame["label"].tolist()[:2] == by_path["label"].tolist()[:2] and "not an image" in frame["error"][2]
    encoded = model.predict([base64.b64encode(b).decode() for b in raw])
    np.testing.assert_allclose(np.stack(encoded["probabilities"]), np.stack(by_path["probabilities"][:2]), atol=1e-6)
    tensor = model.predict(np.stack([onnx.prepare(p) for p in images[:2]]))
    np.testing.assert_allclose(np.stack(tensor["logits"]), np.stack(by_path["logits"][:2]), atol=1e-5)
    poisoned = np.stack([onnx.prepare(p) for p in images[:2]])
    poisoned[1, 0, 0, 0] = np.nan  # a NaN in: that row's error, never a confident label
    answered = model.predict(poisoned)
    assert answered["label"][0] == tensor["label"][0] and pd.isna(answered["label"][1])
    assert "not finite" in answered["error"][1]
    meta = json.loads(json.dumps(mlflow.models.Model.load(str(folder)).metadata))
    assert meta["transferkit"]["classes"] == ["blue", "green", "red"]

    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(folder),
                               "--env-manager", "local", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"inputs": [base64.b64encode(b).decode() for b in raw]}).encode()
        deadline, answer = time.monotonic() + 90, None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except OSError:
                time.sleep(0.3)
        assert answer is not None, server.stderr.read().decode()[-2000:] if server.poll() is not None else "no answer"
        assert [p["label"] for p in answer["predictions"]] == by_path["label"].tolist()[:2]
    finally:
        server.terminate()
        server.wait(30)


# -- OpenVINO and Core ML (#43) ----------------------------------------------------------------------------------------
def test_openvino_ir_is_gated_and_predicts_and_serves_as_the_onnx_model_does(exported, tmp_path, capsys):
    pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")
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


def test_coreml_package_is_checked_by_its_structure_here(exported, tmp_path):
    pytest.importorskip("coremltools")
    from transferkit.errors import UserError
    from transferkit.exporting.formats import coreml

    _, run, _ = exported
    result = transferkit.export(run, "coreml-fp16", out=str(tmp_path / "export"), runs=3, console=Console(True))
    (check,) = result.checks
    package = tmp_path / "export" / "model.fp16.mlpackage"
    assert package.is_dir() and check.passed and check.size_mb > 0
    if sys.platform != "darwin":  # (Core ML predicts on macOS only: there the gate measures it)
        assert check.checked == "structure" and check.accuracy is None and "gate runs on macOS" in check.note
    assert "image input 64x64 RGB normalized in the graph" in check.note
    saved = json.loads((tmp_path / "export" / "export.json").read_text())["artifacts"][0]
    assert saved["checked"] == check.checked and saved["file"] == "model.fp16.mlpackage"
    meta = exporter.metadata(bundle.read_meta(run)[0])
    assert "3 class labels" in coreml.inspect(package, json.loads(json.dumps(meta)))
    with pytest.raises(UserError, match="class labels"):  # another run's classes: named
        coreml.inspect(package, {**meta, "classes": ["a", "b", "c"]})
    with pytest.raises(UserError, match="not 32"):
        coreml.inspect(package, {**meta, "preprocess": {**meta["preprocess"], "input_size": 32}})


def test_a_format_whose_extra_is_missing_is_one_line_before_any_work(exported, tmp_path, monkeypatch, capsys):
    import importlib.util

    _, run, _ = exported
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openvino", "coremltools") else real(name, *a))
    for fmt, extra in (("openvino", "transferkit[openvino]"), ("coreml", "transferkit[coreml]")):
        assert main(["export", str(run), "--formats", f"onnx,{fmt}", "--out", str(tmp_path / fmt)]) == 2
        err = capsys.readouterr().err
        assert extra in err and len(err.strip().splitlines()) == 1 and not (tmp_path / fmt).exists()
    assert main(["predict", str(run), str(run / "model.json"), "--engine", "openvino"]) == 2
    assert "transferkit[openvino]" in capsys.readouterr().err


def test_a_format_its_converter_cannot_build_leaves_the_others_exported(exported, tmp_path, monkeypatch, capsys):
    pytest.importorskip("coremltools")
    from transferkit.errors import UserError
    from transferkit.exporting.formats import coreml

    def cannot(job, path, precision):
        path.mkdir()  # half-written when it fails: never left under a real name
        raise UserError("Core ML cannot convert efficientnet_lite0: Unsupported fx node alias_default (layer blocks.2)")

    monkeypatch.setattr(coreml, "build_package", cannot)
    _, run, _ = exported
    out = tmp_path / "export"
    assert main(["export", str(run), "--formats", "onnx,coreml", "--out", str(out), "--runs", "2"]) == 1
    err = capsys.readouterr().err
    assert "coreml: not exported: Core ML cannot convert" in err and "alias_default (layer blocks.2)" in err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]
    saved = {a["format"]: a for a in json.loads((out / "export.json").read_text())["artifacts"]}
    assert saved["onnx"]["passed"] and not saved["coreml"]["passed"] and saved["coreml"]["checked"] == "not built"


def test_tflite_fp32_and_int8_are_gated_on_litert_and_predict_as_onnx_does(exported, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None:  # (not importorskip: importing it starts JAX here)
        pytest.skip("the tflite extra is not installed (make test installs it)")
    from transferkit.sessions.litert import read_metadata as tflite_metadata
    from transferkit.prediction.exported import open_exported

    data, run, _ = exported
    out = tmp_path / "export"
    result = transferkit.export(run, "tflite-int8", out=str(out), calib=16, runs=3, console=Console(True))
    fp32, int8 = result.checks  # (int8 is made from the fp32 flatbuffer)
    assert (fp32.format, int8.format) == ("tflite", "tflite-int8") and fp32.checked == int8.checked == "measured"
    assert fp32.top1_agreement == 1.0 and fp32.max_abs_logit_diff < 1e-3 and fp32.passed
    assert int8.size_mb < 0.5 * fp32.size_mb and int8.accuracy_drop_pt is not None  # gated: passed or renamed
    meta = read_metadata(out / "model.onnx") if (out / "model.onnx").exists() else exporter.metadata(bundle.read_meta(run)[0])
    assert tflite_metadata(out / "model.tflite") == json.loads(json.dumps(meta))
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    predictor = open_exported(out / "model.tflite")
    assert predictor.kind == "tflite" and predictor.classes == meta["classes"]
    with transferkit.load(run, engine="onnxruntime") as reference:
        expected = reference.predict(images, top_k=1)
    got = predictor.predict(images, top_k=1)
    assert [p.label for p in got] == [p.label for p in expected]
    np.testing.assert_allclose([p.probability for p in got], [p.probability for p in expected], atol=1e-3)
    # the unknown score rides along (the run has one): the flatbuffer's second output, the run's scores
    assert meta.get("ood") is not None and fp32.ood_max_diff is not None and fp32.ood_max_diff < 1e-4
    assert all(p.ood_score is not None for p in got) and [p.unknown for p in got] == [p.unknown for p in expected]
    np.testing.assert_allclose([p.ood_score for p in got], [p.ood_score for p in expected], atol=1e-4)
    # INT8 moved the score too far to trust: the INT8 flatbuffer is the plain model's, its metadata names no score
    assert int8.ood_max_diff is None and "ood" not in tflite_metadata(out / "model.int8.tflite")
    assert all(p.ood_score is None for p in open_exported(out / "model.int8.tflite").predict(images[:2]))
    capsys.readouterr()
    assert main(["predict", str(out / "model.tflite"), images[0]]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].split(",")[1] == expected[0].label and "XNNPACK" not in captured.err
    assert "jax" not in sys.modules and "litert_torch" not in sys.modules  # converted in a child process
