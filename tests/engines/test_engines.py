"""The inference engine layer: which engine runs where and why, ONNX Runtime's features and
predictions against PyTorch's, the conversion cache (keyed by content, checksummed, rebuilt when
damaged), and the hot paths that never import torch."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import make_dataset
from transferkit import engines
from transferkit.cli import main
from transferkit import machine as cpu
from transferkit.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A default run on tiny images and the cache that holds its conversions."""
    root = tmp_path_factory.mktemp("engines")
    cache = root / "cache"
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE", str(cache))
        run = transferkit.train(data, out=str(root / "run"), image_size=64, quiet=True)
    return {"data": data, "run": run.path, "results": run.results, "cache": cache}


@pytest.fixture
def shared_cache(trained, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(trained["cache"]))
    return trained["cache"]


def test_auto_picks_onnxruntime_on_every_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(cpu, "cuda_driver_present", lambda: False)
    for amx in (False, True):  # the same answers on every CPU: fp32 on ONNX Runtime, AMX or not
        monkeypatch.setattr(cpu, "has_amx_bf16", lambda: amx)
        choice = engines.choose("auto", "auto", "auto", images=100_000)
        assert (choice.engine, choice.device, choice.precision) == ("onnxruntime", "cpu", "fp32")
        assert ("--engine torch" in choice.reason) == amx  # where PyTorch would be faster, it says how
    assert engines.choose("auto", "cpu", "fp32", images=None).engine == "onnxruntime"
    bf16 = engines.choose("auto", "cpu", "bf16")
    assert (bf16.engine, bf16.precision) == ("torch", "bf16") and "bf16" in bf16.reason
    assert engines.choose("torch", "cpu", "fp32").to_dict()["precision"] == "fp32"
    assert engines.choose("onnx", "cpu", "auto").engine == "onnxruntime"  # the old name still works
    with pytest.raises(UserError, match="runs in fp32"):
        engines.choose("onnxruntime", "cpu", "bf16")
    with pytest.raises(UserError, match="runs on the CPU"):
        engines.choose("onnxruntime", "cuda", "auto")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",  # onnxruntime not installed
                        lambda name, *args: None if name == "onnxruntime" else find_spec(name, *args))
    assert "not installed" in engines.choose("auto", "cpu", "auto").reason


def test_auto_asks_the_registered_engines_by_rank_and_an_engine_is_one_registration(monkeypatch):
    """A new engine is one `Engine` registered: `auto` asks it in its rank's turn, --engine names
    it; one that declines passes its reason to the engine asked next."""
    monkeypatch.setattr(cpu, "cuda_driver_present", lambda: False)
    asked = []

    def offer(request):
        asked.append(request)
        if request.precision == "fp32":
            return engines.Choice("eager", "cpu", "fp32", "named" if request.named else "fp32 asked")
        if request.named:
            raise UserError("--engine eager runs in fp32")
        return "eager runs in fp32 only"

    eager = engines.Engine("eager", "a test's engine", features=None, bundle=None, offer=offer, rank=5)
    with engines.ENGINES.temporarily(eager):
        assert "eager" in engines.choices()
        assert engines.choose("auto", "cpu", "fp32") == engines.Choice("eager", "cpu", "fp32", "fp32 asked")
        assert engines.choose("auto", "cpu", "auto").engine == "onnxruntime"  # eager declined: the next rank
        assert engines.choose("eager", "cpu", "fp32").reason == "named"
        with pytest.raises(UserError, match="runs in fp32"):
            engines.choose("eager", "cpu", "bf16")
        bf16 = engines.choose("auto", "cpu", "bf16")  # eager, then ONNX Runtime declined: PyTorch says why
        assert bf16.engine == "torch" and "ONNX Runtime has no bf16" in bf16.reason
    assert [(r.precision, r.named, r.why) for r in asked] == [
        ("fp32", False, None), ("auto", False, None), ("fp32", True, None), ("bf16", True, None), ("bf16", False, None)]
    assert "eager" not in engines.ENGINES


def test_onnxruntime_features_equal_pytorch_fp32_on_real_weights(tmp_path):
    """Lite0's ImageNet weights, multi-layer features, real photos' pixels: the engines agree to
    1e-5 of the features' scale (the README states the measured difference)."""
    import torch

    from transferkit.cache import Cache
    from transferkit.data.decode import eval_array
    from transferkit.engines.convert import Network
    from transferkit.models import backbones
    from transferkit.models.classifier import build_classifier
    from transferkit.runtime import Extractor, Runtime

    spec = backbones.get("efficientnet_lite0")
    pre = spec.with_input_size(96)
    model, _ = build_classifier(spec, 2, features="multi")
    root = Path(__file__).resolve().parents[2] / "samples" / "hymenoptera_small" / "val"
    paths = sorted(str(p) for p in root.rglob("*.jpg"))[:6]
    batch = np.stack([eval_array(p, pre.resize_size, pre.input_size, pre.interpolation) for p in paths])
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    network = Network("features", {"test": 1}, lambda: model.backbone, pre=pre)
    ort = engines.ENGINES.get("onnxruntime").features(network, engines.choose("onnxruntime", "cpu"),
                                                      Cache(tmp_path).prepare(), print)
    got = ort.forward(batch)
    expected = Extractor(model.backbone, pre, Runtime.create("cpu", "fp32")).forward(torch.from_numpy(batch)).numpy()
    assert got.shape == expected.shape and ort.last_features == 1280
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert ort.info["checked_on"] == 6 and ort.info["max_abs_difference"] <= 1e-5 * ort.info["output_scale"]


def test_train_predict_and_eval_say_which_engine_and_why(trained, shared_cache, tmp_path, capsys):
    engine = trained["results"]["engine"]
    assert engine["name"] == "onnxruntime" and engine["precision"] == trained["results"]["precision"] == "fp32"
    assert engine["reason"] and {"cpu", "bf16", "amx"} <= set(engine)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained["run"]), str(trained["data"] / "val"), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("engine: onnxruntime on cpu in fp32") == 1 and "converting" not in err  # cached by train's eval?
    assert main(["eval", str(trained["run"]), "--out", str(tmp_path / "ev")]) == 0
    said = capsys.readouterr().out
    assert "engine: onnxruntime" in said and "difference 0.0000" in said
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["engine"]["name"] == "onnxruntime"
    assert main(["predict", str(trained["run"]), str(trained["data"] / "val"), "--engine", "onnxruntime",
                 "--precision", "bf16"]) == 2
    assert "runs in fp32" in capsys.readouterr().err


def test_pytorch_and_onnxruntime_predict_alike(trained, shared_cache):
    images = sorted(str(p) for p in (trained["data"] / "val").rglob("*.jpg"))
    with transferkit.load(trained["run"], engine="torch", precision="fp32") as a, \
            transferkit.load(trained["run"], engine="onnxruntime") as b:
        assert (a.engine.engine, b.engine.engine) == ("torch", "onnxruntime")
        la, _ = a.logits(images)
        lb, _ = b.logits(images)
    np.testing.assert_allclose(la, lb, atol=1e-4 * max(1.0, np.abs(la).max()))


def test_a_damaged_conversion_is_rebuilt_and_damaged_weights_refused(trained, shared_cache, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    with transferkit.load(run) as p:
        conversion = Path(shared_cache) / "engines" / p.conversion["file"]
        expected, _ = p.logits([str(x) for x in sorted((trained["data"] / "val").rglob("*.jpg"))])
    raw = bytearray(conversion.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    conversion.write_bytes(bytes(raw))
    said = []
    with transferkit.load(run, say=said.append) as p:
        got, _ = p.logits([str(x) for x in sorted((trained["data"] / "val").rglob("*.jpg"))])
    assert any("failed its checksum: converting again" in s for s in said)
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    weights = run / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0x01
    weights.write_bytes(bytes(raw))  # the conversion is cached, but keyed by the verified weights
    assert main(["predict", str(run), str(trained["data"] / "val")]) == 2
    assert "does not match the checksum" in capsys.readouterr().err
    from transferkit.serving.model import ServedModel

    with pytest.raises(UserError, match="does not match the checksum"):  # serve too, its conversion cached
        ServedModel(run)


BLOCK_TORCH = textwrap.dedent("""
    import sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "torchvision"):
                raise ImportError(f"{name} is made unimportable by the test")

    sys.meta_path.insert(0, Blocked())
""")


def _torch_free(code: str, cache: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "TRANSFERKIT_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_hot_paths_never_import_torch(trained, shared_cache, tmp_path):
    """Once the backbone's conversion is cached, a cold default train on new images (decoded by
    worker processes, run on ONNX Runtime), a warm one, predict, eval, a warm doctor and serve all
    run with torch unimportable; the warm bundle is byte-identical to the one trained with torch."""
    run, data, val = trained["run"], trained["data"], trained["data"] / "val"
    assert main(["doctor", str(data), "--out", str(tmp_path / "doc0"), "--quiet"]) == 0  # its features cached
    ready = make_dataset(tmp_path / "ready", classes=("red", "blue"), n_train=2, n_val=1)  # no image of "other"
    assert main(["train", str(ready), "--image-size", "64", "--out", str(tmp_path / "ready-run"), "--no-report"]) == 0
    # the backbone's conversion now exists, whatever ran before; these images have no feature cached:
    other = make_dataset(tmp_path / "other", classes=("blue", "green"), n_train=3, n_val=2)
    proc = _torch_free(f"""
        from transferkit.cli import main
        assert main(["train", {str(other)!r}, "--image-size", "64", "--out", {str(tmp_path / "cold")!r}]) == 0
        assert main(["train", {str(data)!r}, "--image-size", "64", "--out", {str(tmp_path / "warm")!r}]) == 0
        assert main(["doctor", {str(data)!r}, "--out", {str(tmp_path / "doc")!r}]) == 0
        assert main(["predict", {str(run)!r}, {str(val)!r}, "--output", {str(tmp_path / "p.csv")!r}]) == 0
        assert main(["eval", {str(run)!r}, "--out", {str(tmp_path / "ev")!r}]) == 0

        from fastapi.testclient import TestClient
        from transferkit.config import ServeOptions
        from transferkit.serving.app import create_app
        from transferkit.serving.model import ServedModel

        with TestClient(create_app(ServedModel({str(run)!r}), ServeOptions())) as client:
            image = open({str(next(val.rglob("*.jpg")))!r}, "rb").read()
            answer = client.post("/predict", content=image, headers={{"content-type": "image/jpeg"}})
            assert answer.status_code == 200, answer.text
            assert client.get("/model").json()["engine"] == "onnxruntime"
        print("torch" in sys.modules, "timm" in sys.modules)
    """, shared_cache)
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    assert "difference 0.0000" in proc.stdout and "converting" not in proc.stdout + proc.stderr
    assert (tmp_path / "warm" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    cold = json.loads((tmp_path / "cold" / "results.json").read_text())
    assert cold["strategy_info"]["features_computed"] == 10 and cold["engine"]["name"] == "onnxruntime"
    warm = json.loads((tmp_path / "warm" / "results.json").read_text())
    assert warm["val_acc"] == trained["results"]["val_acc"] and warm["strategy_info"]["features_computed"] == 0
    assert json.loads((tmp_path / "doc" / "doctor.json").read_text())["images"] == \
        json.loads((tmp_path / "doc0" / "doctor.json").read_text())["images"]


def test_decoding_streams_in_order_with_workers_and_leaves_none_behind(tmp_path):
    """Worker processes decode the same batches, in the same order, as decoding in this process;
    a pass abandoned halfway stops its workers; a bad file is a reason, not an exception."""
    from helpers import make_image
    from transferkit.data import stream
    from transferkit.models.preprocess import Preprocess

    paths = [str(make_image(tmp_path / f"i{i}.png", (20 * i, 90, 160), seed=i)) for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths.insert(3, str(tmp_path / "bad.jpg"))
    pre = Preprocess(input_size=32, crop_pct=1.0)
    here = list(stream.decode_batches(paths, pre, aug_views=1, seed=5, batch_size=4, workers=0))
    batches = stream.decode_batches(paths, pre, aug_views=1, seed=5, batch_size=4, workers=2)
    assert batches.pool is not None and len(batches.ahead) == 4  # all 4 batches under way at once
    there = list(batches)
    assert batches.pool is None  # exhausted: the workers are stopped
    assert [b[0] for b in here] == [b[0] for b in there] == [[0, 1], [2], [4, 5], [6, 7]]
    assert all(np.array_equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(here, there))
    assert here[1][3][0][0] == 3 and "not an image" in here[1][3][0][1]
    assert here[0][1].dtype == np.uint8 and here[0][1].shape == (4, 3, 32, 32)  # 2 images x (eval + 1 view)
    half = stream.decode_batches(paths, pre, batch_size=2, workers=1)
    next(half)
    workers = list(half.pool._processes.values())
    half.close()
    assert all(not w.is_alive() for w in workers)


def test_int8_features_are_an_engine_asked_for_by_name(tmp_path, monkeypatch, capsys):
    """--engine onnxruntime-int8: the backbone quantized once on real photos (gated against fp32),
    its features cached under their own key, the run predicting on that network (and carrying it);
    never auto; refused, in one line, where INT8 features are unlike fp32's (tiny synthetic images)."""
    from transferkit.engines import int8

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    photos = Path(__file__).resolve().parents[2] / "samples" / "hymenoptera_small"
    run = transferkit.train(photos, out=str(tmp_path / "int8"), engine="onnxruntime-int8", no_report=True)
    said = capsys.readouterr()
    assert "quantizing" in said.out + said.err
    results = run.results
    assert (results["engine"]["name"], results["engine"]["precision"]) == ("onnxruntime-int8", "int8")
    carried = engines.convert.read_converted(run.path / "converted" / "features.tkx")
    assert carried.facts["calibrated_on"] == int8.CALIBRATION and carried.facts["cosine_to_fp32"] >= int8.MIN_COSINE
    assert engines.choose("auto", "cpu", "auto").engine == "onnxruntime"  # auto never picks INT8
    again = transferkit.train(photos, out=str(tmp_path / "again"), engine="onnxruntime-int8", no_report=True)
    said = capsys.readouterr()
    assert "quantizing" not in said.out + said.err and again.results["strategy_info"]["features_computed"] == 0
    assert again.results["val_acc"] == results["val_acc"]
    with transferkit.load(run.path) as predictor:  # auto: the run's own INT8 network
        assert predictor.engine.precision == "int8"
        rows = [r for r in csv.DictReader((run.path / "predictions.csv").open())]
        logits, _ = predictor.logits([r["path"] for r in rows])
    assert [predictor.classes[i] for i in logits.argmax(1)] == [r["predicted"] for r in rows]
    with pytest.raises(UserError, match="runs in INT8"):
        engines.choose("onnxruntime-int8", "cpu", "bf16")

    tiny = make_dataset(tmp_path / "tiny", classes=("blue", "red"), n_train=4, n_val=2)
    fp32 = transferkit.train(tiny, out=str(tmp_path / "fp32"), image_size=64, quiet=True, no_report=True)
    with transferkit.load(fp32.path, engine="onnxruntime-int8") as predictor:  # it does not quantize an fp32 run
        assert predictor.engine.precision == "fp32"
    assert main(["train", str(tiny), "--image-size", "64", "--engine", "onnxruntime-int8",
                 "--out", str(tmp_path / "refused")]) == 2
    assert "use --engine onnxruntime" in capsys.readouterr().err and not (tmp_path / "refused").exists()


OPENVINO_SESSIONS = """
import ctypes, gc, signal, subprocess, sys
import numpy as np
from onnx import TensorProto, helper
from transferkit.sessions import open_session

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def altstack():
    got = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(got)) == 0
    return got.sp, got.size

x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])
model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()
sessions, stacks = [], []
for _ in range(4):
    sessions.append(open_session(model, 1, "openvino"))
    sessions[-1].run(None, {"input": np.ones((1, 4), np.float32)})
    stacks.append(altstack())
for i in (0, 2, 1, 3):  # (Python frees objects in no particular order)
    sessions[i] = None
    gc.collect()
assert len(set(stacks)) == 1 and altstack() == stacks[0], ("the signal stack moved", stacks, altstack())
signal.signal(signal.SIGCHLD, lambda *a: None)  # a handler runs on that stack: it must still be mapped
subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the alternate signal stack OpenVINO swaps is Linux's")
def test_openvino_sessions_leave_the_signal_stack_in_place():
    """Each OpenVINO Core whose CPU plugin loads gives the main thread an alternate signal stack of
    its own and, destroyed, puts back the one it found and unmaps its own: Cores freed out of
    order left the thread on an unmapped stack, and a process that had opened several sessions
    died of SIGSEGV at its next signal (a child's SIGCHLD). Sessions share one Core: the stack
    stays where the first session put it, and the process lives."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")
    done = subprocess.run([sys.executable, "-c", OPENVINO_SESSIONS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
