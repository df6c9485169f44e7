"""`transferkit serve`: the API (FastAPI's test client), its answers equal to `predict`'s for the
bundle and the ONNX file, every bad input a 4xx, auth off loopback, the batcher, and the page in
headless Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit
from helpers import eps, make_dataset, shared_dataset
from transferkit.cli import main
from transferkit.config import ServeOptions
from transferkit.console import Console
from transferkit.errors import UserError

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from transferkit.serving import create_app  # noqa: E402
from transferkit.serving.batcher import Batcher  # noqa: E402
from transferkit.serving.model import ServedModel  # noqa: E402

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny run, its ONNX export and a folder of test images (JPEG and PNG, two sizes)."""
    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    run = transferkit.train(data, out=str(root / "run"), image_size=64, quiet=True).path
    transferkit.export(run, "onnx", runs=2, console=Console(True))
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg")) + sorted(str(p) for p in (data / "train" / "red").glob("*.png"))[:2]
    return {"run": run, "onnx": run / "export" / "model.onnx", "images": images, "cache": root / "cache"}


def _client(model, engine=None, precision="auto", **options) -> TestClient:
    engine = engine or ("auto" if str(model).endswith(".onnx") else "torch")  # (an .onnx file runs on ONNX Runtime)
    return TestClient(create_app(ServedModel(model, engine=engine, precision=precision), ServeOptions(**options)))


def _files(paths):
    return [("file", (Path(p).name, Path(p).read_bytes(), "application/octet-stream")) for p in paths]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server as Ctrl-C does (killed if it has not ended within 20 s)."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _cli_predictions(model, paths, tmp_path, top_k, *options: str) -> dict:
    out = tmp_path / f"preds-{Path(model).name}.json"
    assert main(["predict", str(model), *paths, "--top-k", str(top_k), "--output", str(out), *options]) == 0
    return {Path(p["path"]).name: p for p in json.loads(out.read_text())}


@pytest.mark.precision
@pytest.mark.parametrize("kind, engine", [("run", "torch"), ("run", "auto"), ("onnx", "auto")])
def test_answers_equal_predict_for_the_bundle_and_the_onnx_file(served, kind, engine, precision, tmp_path,
                                                                  monkeypatch):
    """The bundle under PyTorch, the bundle on the engine auto picks, and the exported file: the
    same labels and probabilities as `transferkit predict` with the same engine and precision."""
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(served["cache"]))  # one conversion for this module
    model, paths = served[kind], served["images"]
    options = ["--engine", engine] + (["--precision", precision] if kind == "run" else [])
    expected = _cli_predictions(model, paths, tmp_path, 2, *options)
    # One engine on the same batch: equal in fp32 up to float noise; in bf16 a probability goes
    # through activations rounded to eps(bf16) = 2^-8 and may move by a few of them.
    tolerance = max(1e-5, 4 * eps(precision))
    with _client(model, engine, precision if kind == "run" else "auto") as client:
        many = client.post("/predict?top_k=2", files=_files(paths))  # several images in one request
        one = client.post("/predict?top_k=2", content=Path(paths[1]).read_bytes(), headers={"content-type": "image/jpeg"})
        info = client.get("/model").json()
    assert many.status_code == 200 and one.status_code == 200
    got = {p["name"]: p for p in many.json()["predictions"]}
    assert set(got) == set(expected)
    for name, p in expected.items():
        assert got[name]["label"] == p["label"] and got[name]["error"] is None
        assert got[name]["probability"] == pytest.approx(p["probability"], abs=tolerance)
        assert [t["label"] for t in got[name]["top_k"]] == [t["label"] for t in p["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in got[name]["top_k"]],
                                   [t["probability"] for t in p["top_k"]], atol=tolerance)
    raw = one.json()["predictions"][0]
    assert raw["name"] == "<body>" and raw["label"] == expected[Path(paths[1]).name]["label"]
    assert info["classes"] == ["blue", "green", "red"] and info["format"] == ("onnx" if kind == "onnx" else "pytorch")
    assert info["engine"] == ("pytorch" if engine == "torch" or (kind == "run" and precision == "bf16")
                              else "onnxruntime")
    assert info["backbone"] == "efficientnet_lite0" and info["preprocess"]["input_size"] == 64
    assert info["metrics"]["val_acc"] == json.loads((served["run"] / "results.json").read_text())["val_acc"] or kind == "onnx"
    assert 0 <= info["metrics"]["val_acc"] <= 1 and info["batching"]["images"] == len(paths) + 1


def test_a_bundle_is_converted_once_and_falls_back_to_pytorch_when_it_cannot_be(served, monkeypatch, tmp_path):
    import torch

    from transferkit.cache import Cache
    from transferkit.engines import convert, ort

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(served["cache"]))  # converted already by the parity test
    run = shutil.copytree(served["run"], tmp_path / "run", ignore=shutil.ignore_patterns("converted"))
    first, _, _ = ort.converted_bundle(run, Cache())  # (the copy carries no conversion of its own)
    said = []
    again, _, _ = ort.converted_bundle(run, Cache(), say=said.append)
    assert again.path == first.path and again.model == first.model and said == []  # cached
    assert again.facts["checked_on"] == convert.CHECK_IMAGES  # on the run's validation images (it has 9)
    first.path.unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    model = ServedModel(run, say=said.append)
    assert model.info["engine"] == "pytorch" and "converting" in said[0]
    assert said[1].startswith("warning: ONNX Runtime could not run it") and "unsupported operator" in said[1]
    assert not first.path.exists() and not list(first.path.parent.glob("*.tmp*"))  # nothing half-written
    with pytest.raises(UserError, match="--engine onnxruntime"):
        ServedModel(run, engine="onnx", say=said.append)


def _bomb() -> bytes:
    """A 12000 x 12000 PNG of 18 kB: 144 million pixels, past Pillow's limit."""
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, "PNG")
    return out.getvalue()


def test_every_bad_input_is_a_4xx_with_a_one_line_reason(served):
    good = Path(served["images"][0]).read_bytes()
    with _client(served["onnx"], max_body_mb=1, max_files=3) as client:
        cases = {
            "empty body": (client.post("/predict", content=b"", headers={"content-type": "image/jpeg"}), 400, "empty"),
            "text as jpeg": (client.post("/predict", content=b"hello", headers={"content-type": "image/jpeg"}),
                             400, "not an image"),
            "text file": (client.post("/predict", files=[("file", ("a.txt", b"hello", "text/plain"))]), 400,
                          "a.txt: not an image"),
            "truncated": (client.post("/predict", files=[("file", ("t.jpg", good[:300], "image/jpeg"))]), 400,
                          "truncated"),
            "bomb": (client.post("/predict", files=[("file", ("bomb.png", _bomb(), "image/png"))]), 400,
                     "decompression bomb"),
            "oversize": (client.post("/predict", content=b"\xff" * 1_100_000, headers={"content-type": "image/jpeg"}),
                         413, "over the server's limit"),
            "oversize, streamed": (client.post("/predict", content=iter([b"\xff" * 400_000] * 3),
                                               headers={"content-type": "image/jpeg"}), 413, "over the server's limit"),
            "json": (client.post("/predict", json={"image": "x"}), 415, "unsupported content type 'application/json'"),
            "no content type": (client.post("/predict", content=good, headers={"content-type": ""}), 415,
                                "unsupported content type"),
            "form without a file": (client.post("/predict", data={"x": "1"}, files=[("other", ("", b"", ""))]), 400, None),
            "too many files": (client.post("/predict", files=_files(served["images"][:4])), 400, "files"),
            "top_k 0": (client.post("/predict?top_k=0", files=_files(served["images"][:1])), 422, None),
        }
        for name, (response, status, words) in cases.items():
            assert response.status_code == status, (name, response.status_code, response.text)
            detail = response.json()["detail"]
            if words:
                assert words in detail and "\n" not in detail, (name, detail)
        mixed = client.post("/predict", files=[("file", ("ok.jpg", good, "image/jpeg")), ("file", ("bad.jpg", b"no", "image/jpeg"))])
        assert mixed.status_code == 200
        ok, bad = mixed.json()["predictions"]
        assert ok["label"] and ok["error"] is None and bad["label"] is None and "not an image" in bad["error"]
        assert client.get("/health").json() == {"status": "ok"}  # still answering


def test_token_is_required_when_set_and_off_loopback(served, monkeypatch):
    with _client(served["onnx"], token=TOKEN) as client:
        image = _files(served["images"][:1])
        assert client.post("/predict", files=image).status_code == 401
        wrong = client.post("/predict", files=image, headers={"Authorization": "Bearer " + "x" * 23})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert client.get("/model").status_code == 401
        assert client.post("/predict", files=image, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        assert "HTTPBearer" in json.dumps(client.get("/openapi.json").json()["components"]["securitySchemes"])
    monkeypatch.delenv("TRANSFERKIT_TOKEN", raising=False)
    for options, words in [({"host": "0.0.0.0"}, "--token"), ({"host": "192.168.1.5"}, "--no-auth"),
                           ({"token": "short"}, "16 characters"), ({"token": TOKEN, "no_auth": True}, "not both"),
                           ({"host": "example.com"}, "IP address"), ({"port": 70000}, "--port")]:
        with pytest.raises(UserError, match=re.escape(words)):
            ServeOptions(**options)
    assert ServeOptions(host="0.0.0.0", no_auth=True).token is None
    assert ServeOptions(host="::1").host == "::1"
    monkeypatch.setenv("TRANSFERKIT_TOKEN", TOKEN)
    assert ServeOptions(host="0.0.0.0").token == TOKEN  # from the environment: not in the process list


def test_cors_is_off_unless_asked_and_the_page_loads_nothing_from_elsewhere(served):
    origin = {"Origin": "http://elsewhere.example"}
    with _client(served["onnx"]) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
        page = client.get("/")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN, no external font
        docs = client.get("/docs").text
        assert "cdn" not in docs.lower() and client.get("/openapi.json").json()["paths"]["/predict"]
    with _client(served["onnx"], cors="http://elsewhere.example") as client:
        assert client.get("/health", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_readiness_follows_the_model_and_each_request_is_logged_once(served, caplog):
    with TestClient(create_app(served["run"].parent / "missing")) as client:  # loads in the background
        for _ in range(100):
            ready = client.get("/ready")
            if "not found" in ready.text:
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "not found" in ready.json()["detail"]
        assert client.get("/health").status_code == 200
        assert client.post("/predict", files=_files(served["images"][:1])).status_code == 503
    caplog.set_level(logging.INFO, logger="transferkit.serve")
    with TestClient(create_app(served["onnx"])) as client:  # loads in the background
        for _ in range(200):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/ready").json() == {"ready": True, "model": "model.onnx"}
        caplog.clear()
        client.post("/predict", files=_files(served["images"][:2]))
    lines = [r.getMessage() for r in caplog.records if r.name == "transferkit.serve"]
    assert len(lines) == 1 and re.search(r"POST /predict 200 2 image\(s\) \d+B [\d.]+ms$", lines[0]), lines


def test_the_worker_factory_reads_the_model_and_options_from_the_environment(served, monkeypatch):
    from transferkit.serving.server import ENV, from_environment

    monkeypatch.setenv(ENV, json.dumps({"model": str(served["onnx"]), "top_k": 1, "workers": 2}))
    with TestClient(from_environment()) as client:
        answer = client.post("/predict", files=_files(served["images"][:1])).json()
    assert len(answer["predictions"][0]["top_k"]) == 1
    monkeypatch.setenv(ENV, "{}")
    with pytest.raises(UserError, match="model"):
        from_environment()


def test_serving_an_onnx_file_never_imports_torch(served):
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from transferkit.serving import create_app
        with TestClient(create_app({str(served['onnx'])!r})) as client:
            while client.get("/ready").status_code != 200:
                pass
            r = client.post("/predict", content=open({served['images'][0]!r}, "rb").read(),
                            headers={{"content-type": "image/jpeg"}})
            assert r.status_code == 200, r.text
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_batcher_joins_concurrent_requests_and_contains_failures():
    sizes = []

    def run(batch):
        sizes.append(len(batch))
        time.sleep(0.05)  # the model is busy: the others queue up meanwhile
        if (batch < 0).any():
            raise RuntimeError("model failed")
        return batch.reshape(len(batch), -1)[:, :1] * 2

    async def scenario():
        async with Batcher(run, max_batch=8, max_wait=0.001) as batcher:
            inputs = [np.full((2 if i % 3 == 0 else 1, 2), i, np.float32) for i in range(12)]
            first = asyncio.ensure_future(batcher(inputs[0]))
            await asyncio.sleep(0.01)  # the first runs alone; the others arrive while the model is busy
            results = [await first] + await asyncio.gather(*(batcher(x) for x in inputs[1:]))
            for x, y in zip(inputs, results):
                np.testing.assert_array_equal(y[:, 0], x[:, 0] * 2)  # each request gets its own rows back
            failed = await asyncio.gather(batcher(np.full((1, 2), -1, np.float32)), return_exceptions=True)
            after = await batcher(np.ones((1, 2), np.float32))  # the next batch runs as usual
            return failed, after

    failed, after = asyncio.run(scenario())
    assert sizes == [2, 8, 6, 1, 1]  # 14 rows that queued up went in batches of at most 8, in order
    assert isinstance(failed[0], RuntimeError) and after[0, 0] == 2


# -- the real server and the page in a browser ----------------------------------------------------


def _start_server(model, *extra) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(model), "--port", "0", *extra],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("serving "):
            url = re.search(r"at (http://\S+/)", "".join(lines)).group(1)
            return proc, url
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_workers_serve_the_same_model_from_one_command(served):
    """`--workers 2` on the ONNX file (each worker loads it; torch-free, so quick to start)."""
    proc, url = _start_server(served["onnx"], "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(url + "ready", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        body = Path(served["images"][0]).read_bytes()
        for _ in range(4):
            request = urllib.request.Request(url + "predict", body, {"Content-Type": "image/jpeg"})
            assert json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"][0]["label"]
        # a client that sends its whole (too large) body before reading gets the 413, not a reset
        big = urllib.request.Request(url + "predict", b"\0" * 30_000_000, {"Content-Type": "image/jpeg"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(big, timeout=60)
        assert refused.value.code == 413
        # a client that goes away mid-body: no server error, the next request is answered
        host, port = re.search(r"//([^:/]+):(\d+)/", url).groups()
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 100000\r\n\r\n" + body[:1000])
        time.sleep(0.5)
        request = urllib.request.Request(url + "predict", body, {"Content-Type": "image/jpeg"})
        assert urllib.request.urlopen(request, timeout=30).status == 200
        with pytest.raises(urllib.error.HTTPError):  # a CR/LF in the path forges no log line
            urllib.request.urlopen(url + "x%0D%0Aforged%1B[2J", timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    log = proc.stderr.read()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert "x\\r\\nforged\\x1b[2J" in log and not any(line.startswith("forged") for line in log.splitlines())


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_what_predict_says(served, tmp_path):
    """`transferkit serve` for real; the page in Chromium: choose a photo, read the label and
    probability shown, compare with `transferkit predict`; keyboard reachable; nothing loaded
    from elsewhere; a screenshot kept."""
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_path:
        pytest.skip("chromium is not installed: `make system-deps` (run by `make test`) installs Debian's package")
    photo = str(sorted((shared_dataset("hymenoptera_data") / "val" / "bees").glob("*.jpg"))[0])
    # one engine and precision for both (fp32: the same numbers on every CPU)
    engine = ("--engine", "torch", "--precision", "fp32")
    expected = _cli_predictions(served["run"], [photo], tmp_path, 3, *engine)[Path(photo).name]
    proc, url = _start_server(served["run"], *engine)
    try:
        health = json.loads(urllib.request.urlopen(url + "health", timeout=10).read())
        assert health == {"status": "ok"}
        requested = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert "3 classes" in page.inner_text("#model-summary") and "val accuracy" in page.inner_text("#model-summary")
            assert not page.is_visible("#token-form")  # no token asked for: the server has none
            for _ in range(6):  # the file chooser is reached by keyboard
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "files":
                    break
            assert page.evaluate("document.activeElement.id") == "files"
            page.set_input_files("#files", photo)
            card = page.wait_for_selector("li.result[data-state=done]", timeout=30_000)
            label, probability = card.get_attribute("data-label"), float(card.get_attribute("data-probability"))
            shown = card.inner_text()
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
            browser.close()
        assert label == expected["label"] and probability == pytest.approx(expected["probability"], abs=1e-5)
        assert f"{100 * expected['probability']:.1f}%" in shown and len(card_bars := re.findall(r"\d+\.\d%", shown)) >= 3, card_bars
        assert all(u.startswith(url) or u.startswith("blob:") for u in requested), requested
        assert (tmp_path / "serve_page.png").stat().st_size > 10_000
    finally:
        _stop(proc)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_the_pages_camera_mode_predicts_live_frames_at_a_bounded_rate(served):
    """The page's camera (#42): Chromium's fake camera, its frames sent to /predict at most
    CAMERA_FPS a second and one at a time, the top labels drawn over the picture; stopped, the
    camera is released."""
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_path:
        pytest.skip("chromium is not installed: `make system-deps` (run by `make test`) installs Debian's package")
    proc, url = _start_server(served["run"])
    try:
        posts = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=[
                "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
            page = browser.new_page()
            page.on("request", lambda r: posts.append(time.monotonic()) if r.method == "POST" and "predict" in r.url else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert not page.is_visible("#camera")
            page.click("#camera-toggle")
            deadline = time.monotonic() + 30  # (polled here: the page's CSP forbids wait_for_function's eval)
            while int(page.get_attribute("#camera-labels", "data-frames") or 0) < 4 and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert int(page.get_attribute("#camera-labels", "data-frames") or 0) >= 4, page.inner_text("#camera-status")
            labels = page.locator("#camera-labels")
            assert labels.get_attribute("data-label") in ("blue", "green", "red")
            assert re.search(r"\d+\.\d%", labels.inner_text())
            assert page.get_attribute("#camera-toggle", "aria-pressed") == "true"
            labels_seen = len(posts)
            page.click("#camera-toggle")
            assert page.evaluate("document.querySelector('#camera-video').srcObject === null")
            assert not page.is_visible("#camera")
            linked = browser.new_page()  # the studio's "camera" link: the camera starts with the page
            linked.goto(url + "#camera")
            linked.wait_for_selector("#camera-labels li", timeout=30_000)
            assert linked.get_attribute("#camera-toggle", "aria-pressed") == "true"
            browser.close()
        first = posts[:int(labels_seen)]  # (the first page's requests)
        rate = (len(first) - 1) / (first[-1] - first[0])
        assert len(first) >= 4 and rate <= 2.5, (len(first), rate)  # CAMERA_FPS = 2 a second
    finally:
        _stop(proc)


@pytest.mark.parametrize("kind", ["run", "onnx"])
def test_tritonclient_gets_what_predict_gives(served, kind, tmp_path, monkeypatch):
    """The Open Inference Protocol (v2) through the real Triton HTTP client: encoded images (the
    binary tensor extension, tritonclient's default) and preprocessed FP32 tensors (JSON), the
    classification extension, the token, and the protocol's error body on bad requests."""
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
    from tritonclient.utils import InferenceServerException

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(served["cache"]))  # one conversion for this module
    model, paths = served[kind], served["images"]
    expected = _cli_predictions(model, paths, tmp_path, 3)  # every class's probability
    proc, url = _start_server(model, "--token", TOKEN)
    try:
        client = httpclient.InferenceServerClient(re.search(r"//([^/]+)/", url).group(1), network_timeout=60)
        token = {"Authorization": f"Bearer {TOKEN}"}

        def auth():  # a fresh dict per call: tritonclient adds its binary header to the one it is given
            return dict(token)

        deadline = time.monotonic() + 60
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.is_server_live()
        name = model.name
        meta = client.get_model_metadata(name, headers=auth())
        classes = meta["parameters"]["classes"]
        assert classes == ["blue", "green", "red"] and client.is_model_ready(name, headers=auth())
        assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
            "image": ("BYTES", [-1]), "input": ("FP32", [-1, 3, 64, 64])}
        images = httpclient.InferInput("image", [len(paths)], "BYTES")
        images.set_data_from_numpy(np.array([Path(p).read_bytes() for p in paths], dtype=np.object_))
        result = client.infer(name, [images], headers=auth())
        probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
        # The same engine (ONNX Runtime, fp32) on the same inputs; only how the images are batched
        # together differs: equal to 1e-5.
        for i, path in enumerate(paths):
            want = expected[Path(path).name]
            assert labels[i].decode() == want["label"]
            for t in want["top_k"]:
                assert probs[i, classes.index(t["label"])] == pytest.approx(t["probability"], abs=1e-5)
        # the same images as the tensor model.onnx takes (JSON this time): the same probabilities
        from transferkit.prediction.onnx_predictor import OnnxPredictor

        x = np.stack([OnnxPredictor(served["onnx"]).prepare(p) for p in paths]).astype(np.float32)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        as_tensor = client.infer(name, [tensor], headers=auth(),
                                 outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
        np.testing.assert_allclose(as_tensor.as_numpy("probabilities"), probs, atol=1e-5)
        assert as_tensor.as_numpy("label") is None  # only what was asked for
        top = client.infer(name, [images], headers=auth(),
                           outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)])
        score, index, label = top.as_numpy("probabilities")[0, 0].decode().split(":")
        assert label == labels[0].decode() and classes[int(index)] == label
        assert float(score) == pytest.approx(probs[0].max(), abs=1e-5)

        def refused(inputs, model_name=name, headers=None):
            with pytest.raises(InferenceServerException) as exc:
                client.infer(model_name, inputs, headers=auth() if headers is None else headers)
            return exc.value.status(), exc.value.message()

        broken = httpclient.InferInput("image", [2], "BYTES")
        broken.set_data_from_numpy(np.array([Path(paths[0]).read_bytes(), b"not an image"], dtype=np.object_))
        status, message = refused([broken])
        assert status == "400" and message.startswith("image 1 of 2:")
        half = httpclient.InferInput("input", [1, 3, 64, 64], "FP16")
        half.set_data_from_numpy(x[:1].astype(np.float16))
        assert refused([half]) == ("400", "input 'input' must be FP32, not FP16")
        small = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
        small.set_data_from_numpy(x[:1, :, :32, :32].copy())
        assert refused([small]) == ("400", "input shape [1, 3, 32, 32]: this model takes [N, 3, 64, 64]")
        assert refused([images], model_name="other")[0] == "404"
        status, message = refused([images], headers={})
        assert status == "401" and "token" in message
        many = httpclient.InferInput("image", [17], "BYTES")
        many.set_data_from_numpy(np.array([Path(paths[0]).read_bytes()] * 17, dtype=np.object_))
        assert refused([many])[0] == "413"  # --max-files 16, as /predict
        # a client that is not tritonclient: plain JSON with a base64 image
        import base64

        body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "data": [base64.b64encode(Path(paths[0]).read_bytes()).decode()]}]}).encode()
        request = urllib.request.Request(f"{url}v2/models/{name}/infer", body,
                                         {"Content-Type": "application/json", **token})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["outputs"][1] == {"name": "label", "datatype": "BYTES", "shape": [1],
                                        "data": [labels[0].decode()]}
        assert answer["outputs"][0]["data"] == pytest.approx(probs[0].tolist(), abs=1e-5)
        garbled = urllib.request.Request(f"{url}v2/models/{name}/infer", b"{not json", token)
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(garbled, timeout=30)
        assert bad.value.code == 400 and "error" in json.loads(bad.value.read())
    finally:
        proc.terminate()
        proc.wait(30)
