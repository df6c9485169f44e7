"""Reliability, fourth round: the newest surfaces (studio, /v2, fixes, out-dir prediction, the
cache, runs) on input no earlier test had, one test per class of fault: security, writes over the
user's files, files read back that cannot be trusted, protocol inputs, state and concurrency.
Every bad file is made here; the real commands, the real ASGI apps and the real processes run."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import transferkit
from helpers import file_tree, make_dataset
from transferkit.cli import main

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)
PAGE = {"X-Studio": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dataset and a run trained on it (random weights, 64 px: the point is the plumbing)."""
    root = tmp_path_factory.mktemp("reliable")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=4, n_val=2)
    run = transferkit.train(data, out=str(root / "runs" / "a"), **TINY).path
    return {"root": root, "data": data, "run": run, "runs": root / "runs"}


def _bomb(path: Path) -> Path:
    """A 13000 x 13000 1-bit PNG of about 20 kB: 169 million pixels, past Pillow's pixel limit."""
    Image.new("1", (13000, 13000)).save(path, "PNG")
    return path


def _studio(data, runs, **kw) -> TestClient:
    from transferkit.config import StudioOptions
    from transferkit.studio.app import create_studio

    options = StudioOptions(runs_dir=str(runs), **kw)
    return TestClient(create_studio([data], options), base_url="http://127.0.0.1:8765")


# -- 1. security ----------------------------------------------------------------------------------

def test_the_studio_serves_images_not_what_a_link_in_the_data_points_at(tiny, tmp_path):
    """A link inside DATA to a file outside it (a key, a password file) is never served; a link to
    an image is, as the image type its bytes say. A decompression bomb is not decoded for a
    thumbnail. A fix's reason that a spreadsheet would run is written as text."""
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    photo = tmp_path / "elsewhere.png"
    Image.new("RGB", (40, 30), (200, 40, 30)).save(photo)
    os.symlink(secret, data / "train" / "red" / "key.jpg")
    os.symlink(photo, data / "train" / "red" / "linked.jpg")
    _bomb(data / "train" / "red" / "bomb.png")
    with _studio(data, tmp_path / "runs") as client:
        for kind in ("image", "thumb"):  # listed as an image by its name or not: never served
            r = client.get(f"/api/datasets/data/{kind}", params={"path": "train/red/key.jpg"})
            assert r.status_code in (400, 404) and b"secret" not in r.content, (kind, r.status_code)
        linked = client.get("/api/datasets/data/image", params={"path": "train/red/linked.jpg"})
        assert linked.status_code == 200 and linked.headers["content-type"] == "image/png"
        assert linked.content == photo.read_bytes()
        before = _rss_mb()
        bomb = client.get("/api/datasets/data/thumb", params={"path": "train/red/bomb.png"})
        assert bomb.status_code == 400 and "too many pixels" in bomb.json()["detail"]
        assert _rss_mb() - before < 200  # refused from its header, not decoded (a decode took +950 MB)
        reason = '=HYPERLINK("http://evil.example","click")\n# not a comment\r\nline three'
        r = client.post("/api/datasets/data/fixes", headers=PAGE,
                        json={"path": "train/blue/blue0.png", "action": "exclude", "reason": reason})
        assert r.status_code == 200
        text = Path(client.get("/api/datasets/data/fixes").json()["file"]).read_text()
        row = [line for line in text.splitlines() if line.startswith("train/blue/blue0.png")]
        assert len(row) == 1 and ",\"'=HYPERLINK(" in row[0]  # one line, the formula escaped
        fixes = client.get("/api/datasets/data/fixes").json()["fixes"]
        assert fixes[0]["reason"].startswith('=HYPERLINK("http') and "\n" not in fixes[0]["reason"]


def test_the_studio_never_blocks_on_a_pipe_and_says_when_it_cannot_write(tmp_path):
    """A FIFO named like an image in DATA (whose read would block for ever) is no image; a
    file name that is not UTF-8 can be fixed; a fixes file that cannot be written is a 4xx that
    changes nothing; a thumbnail cache that cannot be written still shows the thumbnail."""
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    os.mkfifo(data / "train" / "red" / "pipe.jpg")
    odd = os.fsdecode(os.path.join(os.fsencode(data / "train" / "blue"), b"b\xfflue.png"))
    os.rename(data / "train" / "blue" / "blue1.png", odd)
    runs = tmp_path / "runs"
    with _studio(data, runs, cache_dir=str(tmp_path / "cache")) as client:
        items = client.get("/api/datasets/data/images").json()["items"]  # (a name not UTF-8: no 500)
        assert len(items) == 6  # the pipe is no image: listed among the unreadable files, never opened
        unreadable = client.get("/api/datasets/data").json()["unreadable"]
        assert [(u["path"], u["reason"]) for u in unreadable] == [
            ("train/red/pipe.jpg", "not a regular file (a pipe, a device or a socket)")]
        for kind in ("image", "thumb"):  # answered at once, never a read that waits for a writer
            r = client.get(f"/api/datasets/data/{kind}", params={"path": "train/red/pipe.jpg"})
            assert r.status_code == 400, (kind, r.text)
        # the odd name as the page's URLs give it back (U+FFFD for its odd byte)
        assert client.get("/api/datasets/data/thumb", params={"path": "train/blue/b\ufffdlue.png"}).status_code == 200
        rel = os.path.relpath(odd, data)
        # (as the page's JSON.stringify sends it: the lone surrogate escaped)
        r = client.post("/api/datasets/data/fixes", headers={**PAGE, "Content-Type": "application/json"},
                        content=json.dumps({"path": rel, "action": "exclude"}))
        assert r.status_code == 200, r.text
        assert client.get("/api/datasets/data/fixes").json()["fixes"][0]["path"] == rel
        fixes_file = Path(client.get("/api/datasets/data/fixes").json()["file"])
        saved = fixes_file.read_bytes()
        assert b"b\xfflue.png" in saved  # the name's own bytes
        fixes_file.unlink()
        fixes_file.parent.rmdir()
        fixes_file.parent.write_text("a file where the fixes folder goes")
        r = client.post("/api/datasets/data/fixes", headers=PAGE, json={"path": "train/red/red0.png",
                                                                          "action": "exclude"})
        assert r.status_code == 400 and "cannot be written" in r.json()["detail"] and "nothing was changed" in r.json()["detail"]
        assert [f["path"] for f in client.get("/api/datasets/data/fixes").json()["fixes"]] == [rel]
        thumbs = tmp_path / "cache" / "thumbnails"
        import shutil

        shutil.rmtree(thumbs, ignore_errors=True)
        thumbs.write_text("a file where the thumbnails go")
        r = client.get("/api/datasets/data/thumb", params={"path": "train/red/red0.png"})
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# -- 2. the user's files are never replaced ----------------------------------------------------------

def test_predict_out_dir_never_writes_into_the_inputs_or_a_folder_of_the_users(tiny, tmp_path, capsys):
    photos = make_dataset(tmp_path / "photos", n_train=2, n_val=0, with_val=False) / "train"
    (photos / "predictions.csv").write_text("my own notes\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"mine": true}')
    before, before_mine = file_tree(photos), file_tree(mine)
    run = str(tiny["run"])
    for out in (photos, photos / "blue" / "preds", mine):
        capsys.readouterr()
        assert main(["predict", run, str(photos), "--out-dir", str(out), "--merge"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("inside" in err or "not a predict --out-dir folder" in err), err
    assert file_tree(photos) == before and file_tree(mine) == before_mine
    # an --out-dir resumed with an edited list is another run's folder, not the old list's answers
    listing = tmp_path / "list.txt"
    files = sorted(str(p) for p in photos.rglob("*.png"))
    listing.write_text("\n".join(files[:2]) + "\n")
    out = tmp_path / "out"
    assert main(["predict", run, "--files-from", str(listing), "--out-dir", str(out), "--merge"]) == 0
    listing.write_text("\n".join(files[2:]) + "\n")
    capsys.readouterr()
    assert main(["predict", run, "--files-from", str(listing), "--out-dir", str(out), "--merge"]) == 2
    assert "holds the predictions of another run" in capsys.readouterr().err


def test_a_fixes_file_keeps_every_decision_whatever_its_reasons_hold(tiny, tmp_path):
    from transferkit.data import fixes

    data = tiny["data"]
    decided = {f"train/{c}/{c}{i}.png": fixes.Fix(f"train/{c}/{c}{i}.png", "exclude", "", reason, "t")
               for i, (c, reason) in enumerate([("blue", "two\nlines"), ("red", "# hash first"),
                                                ("green", '@SUM(A1)'), ("blue", "-2+3"), ("red", 'a "quote"')])}
    decided["#odd.png"] = fixes.Fix("#odd.png", "relabel", "red", "path starts with #", "t")
    file = tmp_path / "f.csv"
    fixes.write_fixes(file, decided, data)
    back = fixes.read_fixes(file, data)
    assert set(back) == set(decided)  # nothing lost to a comment line or a broken row
    assert [back[k].reason for k in sorted(back)] == [fixes.one_line(decided[k].reason) for k in sorted(decided)]
    fixes.write_fixes(file, back, data)  # saved again: the same decisions
    assert fixes.read_fixes(file, data) == back


# -- 3. files the tool reads back are not trusted ----------------------------------------------------

def test_files_read_back_are_bounded_and_typed(tiny, tmp_path, capsys):
    """Deeply nested, wrong-typed, FIFO, BOM, stray-quote, oversized: each a line or a damaged row,
    never a traceback, a hang or a server error."""
    import shutil

    runs = tmp_path / "runs"
    for name in ("nested", "typed", "fifo", "metrics"):
        shutil.copytree(tiny["run"], runs / name)
    (runs / "nested" / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "nested" / "config.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (runs / "typed" / "results.json").write_text(json.dumps({"val_acc": "high", "wall_s": [1], "data": "x",
                                                              "finished_at": {"a": 1}}))
    (runs / "typed" / "config.yaml").write_text("- a list\n- not a mapping\n")
    (runs / "fifo" / "config.yaml").unlink()
    os.mkfifo(runs / "fifo" / "config.yaml")
    (runs / "metrics" / "metrics.json").write_text(json.dumps({
        "classes": "blue", "confusion_matrix": "none", "per_class": {"blue": [1, 2]}, "macro_avg": [0.5]}))
    started = time.monotonic()
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0  # a FIFO never blocks it
    assert time.monotonic() - started < 30
    out = capsys.readouterr().out
    assert "nested: results.json cannot be read" in out and "typed: results.json cannot be read" in out
    with _studio(tiny["data"], runs) as client:
        assert client.get("/api/runs").status_code == 200
        for name in ("nested", "typed", "fifo", "metrics"):
            status = client.get(f"/api/runs/{name}").status_code
            assert status == 200, (name, status)
        view = client.get("/api/runs/metrics").json()
        assert view["confusion"] is None and view["per_class"] == {"blue": dict.fromkeys(
            ("precision", "recall", "f1", "support"))}  # numbers that are not numbers: none
        assert client.get("/api/compare", params={"a": "metrics", "b": "fifo"}).status_code == 200
    # a damaged results.json after eval: the eval's report is still written
    assert main(["report", str(runs / "nested")]) == 0
    # --config: nested, a FIFO, aliases that expand to billions
    for text in ("a: " + "[" * 5000 + "]" * 5000, None, "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n"
                 "c: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d]\n"
                 "f: &f [*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g]\n"):
        cfg = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
        cfg.write_text(text) if text is not None else os.mkfifo(cfg)
        capsys.readouterr()
        assert main(["train", str(tiny["data"]), "--config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "config file" in err, err
    # the fixes file: a BOM and CRLF are fine; a stray quote, a 200 KB cell: the line named
    good = tmp_path / "bom.csv"
    good.write_bytes(b"\xef\xbb\xbfpath,action,label,reason,time\r\ntrain/blue/blue0.png,exclude,,ok,t\r\n")
    from transferkit.data import fixes

    assert list(fixes.read_fixes(good, tiny["data"])) == ["train/blue/blue0.png"]
    for body, words in ((b'path,action,label,reason,time\ntrain/blue/blue0.png,exclude,,"never closed,t\n'
                         b"train/red/red0.png,exclude,,,\n", "line 2"),
                        (b"path,action,label,reason,time\ntrain/blue/blue0.png,exclude,," + b"x" * 200_000 + b",t\n",
                         "line 2")):
        bad = tmp_path / f"bad-{len(body)}.csv"
        bad.write_bytes(body)
        capsys.readouterr()
        assert main(["train", str(tiny["data"]), "--fixes", str(bad), *_tiny_flags()]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    capsys.readouterr()
    assert main(["train", str(tiny["data"]), "--cache-limit", "1e300GB", *_tiny_flags()]) == 2
    assert "more than any disk holds" in capsys.readouterr().err


def test_lists_and_names_read_as_they_were_written(tiny, tmp_path, capsys):
    """A file name that is not UTF-8 trains (its run's data fingerprint hashes its bytes); an
    exclude list or a --files-from list saved with a BOM and CRLF names its first file; an exclude
    list that is a FIFO is one line, not a hang."""
    import shutil

    data = Path(shutil.copytree(tiny["data"], tmp_path / "data"))
    odd = os.path.join(os.fsencode(data / "train" / "blue"), b"b\xfflue.png")
    os.rename(data / "train" / "blue" / "blue0.png", odd)
    first = str(data / "train" / "red" / "red0.png")
    listing = tmp_path / "exclude.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + first.encode() + b"\r\n# a comment\r\n")
    run = transferkit.train(data, out=str(tmp_path / "run"), exclude=str(listing), **TINY)
    assert run.results["excluded"]["images"] == 1 and len(run.results["data"]["fingerprint"]) == 16
    from transferkit.prediction.batch import iter_inputs

    assert list(iter_inputs([], str(listing))) == [first]
    os.mkfifo(tmp_path / "fifo.txt")
    capsys.readouterr()
    assert main(["train", str(data), "--exclude", str(tmp_path / "fifo.txt"), *_tiny_flags()]) == 2
    assert "is not a regular file" in capsys.readouterr().err


def _tiny_flags() -> list[str]:
    return ["--model", "squeezenet1_1", "--weights", "none", "--image-size", "64", "--quiet"]


# -- 4. /v2 and serve inputs ---------------------------------------------------------------------------

def test_protocol_inputs_no_client_sends_are_4xx_never_5xx(tiny):
    from transferkit.config import ServeOptions
    from transferkit.serving.app import create_app
    from transferkit.serving.model import ServedModel

    model = ServedModel(tiny["run"], engine="onnxruntime", say=lambda m: None)
    name = model.info["name"]
    size = model.info["preprocess"]["input_size"]
    url = f"/v2/models/{name}/infer"
    x = np.zeros((1, 3, size, size), np.float32)

    def binary(header: dict, blob: bytes) -> tuple[bytes, dict]:
        text = json.dumps(header).encode()
        return text + blob, {"Inference-Header-Content-Length": str(len(text))}

    nan_body, nan_head = binary({"inputs": [{"name": "input", "shape": [1, 3, size, size], "datatype": "FP32",
                                             "parameters": {"binary_data_size": x.nbytes}}]},
                                np.full_like(x, np.nan).tobytes())
    good = {"name": "input", "shape": [1, 3, size, size], "datatype": "FP32", "data": x.ravel().tolist()}
    cases = {
        "shape whose product wraps": ({"inputs": [{"name": "input", "shape": [2**32, 2**32], "datatype": "FP32",
                                                   "data": [0.0]}]}, None),
        "a header nested 100,000 deep": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        "data nested deep": ({"inputs": [{**good, "data": json.loads("[" * 60 + "0" + "]" * 60)}]}, None),
        "parameters a list": ({"inputs": [{**good, "parameters": [1, 2]}]}, None),
        "request parameters a string": ({"inputs": [good], "parameters": "binary"}, None),
        "output parameters a number": ({"inputs": [good], "outputs": [{"name": "label", "parameters": 3}]}, None),
        "classification true": ({"inputs": [good], "outputs": [{"name": "probabilities",
                                                                  "parameters": {"classification": True}}]}, None),
        "binary_data_output a string": ({"inputs": [good], "parameters": {"binary_data_output": "yes"}}, None),
        "shape of booleans": ({"inputs": [{**good, "shape": [True, 3, size, size]}]}, None),
        "all-NaN binary FP32": (nan_body, nan_head),
        "binary_data_size a float": ({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32",
                                                  "parameters": {"binary_data_size": 4.0}}]}, None),
    }
    with TestClient(create_app(model, ServeOptions())) as client:
        for case, (body, headers) in cases.items():
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(url, content=raw, headers={"Content-Type": "application/json", **(headers or {})})
            assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:200])
            assert "error" in r.json() and "\n" not in r.json()["error"], case
        fine = client.post(url, json={"inputs": [good], "outputs": [{"name": "probabilities",
                                                                   "parameters": {"classification": 2}}]})
        assert fine.status_code == 200 and fine.json()["outputs"][0]["shape"] == [1, 2]
        assert client.get("/health").json() == {"status": "ok"}


# -- 5. state and concurrency ----------------------------------------------------------------------------

def test_a_served_model_outlives_the_request_that_started_it_and_serve_twice_is_one_server(tiny):
    """The studio's Serve: started from a web server's worker thread that then ends (the kernel's
    parent-death signal follows the thread that forked: the model died seconds later); two
    clicks at once start one server."""
    import urllib.request

    from transferkit.studio.jobs import Servers

    servers = Servers()
    urls = []
    try:
        clicks = [threading.Thread(target=lambda: urls.append(servers.start("a", tiny["run"]))) for _ in range(2)]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join(120)
        assert len(urls) == 2 and urls[0] == urls[1]  # one server
        time.sleep(1.0)  # the threads that asked are gone
        answer = json.loads(urllib.request.urlopen(urls[0] + "health", timeout=30).read())
        assert answer == {"status": "ok"} and servers.url("a") == urls[0]
    finally:
        servers.close()
    assert servers.url("a") is None


def test_state_left_by_killed_or_racing_commands_is_safe(tiny, tmp_path, capsys, monkeypatch):
    from transferkit.cache import Cache
    from transferkit.exporting import exporter
    from transferkit.files import sweep_temporary

    # a killed compaction's temporary file (its process gone): the next compaction removes it
    cache = Cache(tmp_path / "cache").prepare()
    shard = cache.root / "features" / "m" / "shards"
    shard.mkdir(parents=True)
    left = shard / ".00000001.dat.999999999-0123456789ab.tmp"
    left.write_bytes(b"\0" * 1000)
    old = time.time() - 3600
    os.utime(left, (old, old))
    mine = shard / f".00000002.dat.{os.getpid()}-0123456789ab.tmp"  # a live process's write: kept
    mine.write_bytes(b"\0")
    os.utime(mine, (old, old))
    capsys.readouterr()
    assert main(["cache", "compact", "--cache-dir", str(cache.root)]) == 0
    assert "1 temporary file(s) left by killed processes removed" in capsys.readouterr().out
    assert not left.exists() and mine.exists()
    assert sweep_temporary(shard, older_than=0) == (0, 0)
    # an export that fails (or is killed) mid-way leaves no artifact under its real name
    out = tmp_path / "export"
    out.mkdir()

    class Failing:
        @staticmethod
        def build(job, path):
            Path(path).write_bytes(b"half a model")
            raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError):
        exporter._build(Failing, None, out / "model.onnx")
    assert list(out.iterdir()) == []
    # run folders: --name cannot leave --runs-dir, --out cannot take over a folder of runs
    for extra, words in ((["--name", "../escaped"], "must be a folder name"),
                         (["--name", "/tmp/x"], "must be a folder name"),
                         (["--out", str(tiny["runs"])], "is a folder of runs")):
        capsys.readouterr()
        assert main(["train", str(tiny["data"]), *extra, "--runs-dir", str(tmp_path / "r"), *_tiny_flags()]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "escaped").exists()
    # an exported model runs on ONNX Runtime alone: another engine is refused, not ignored
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    capsys.readouterr()
    assert main(["predict", str(onnx), str(tiny["data"] / "val"), "--engine", "torch"]) == 2
    assert "exported ONNX model" in capsys.readouterr().err
    # the cache folder and a folder of runs are not datasets
    for folder in (cache.root, tiny["runs"]):
        capsys.readouterr()
        assert main(["doctor", str(folder), "--quiet"]) == 2
        assert "not a dataset" in capsys.readouterr().err


MLFLOW_START = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from transferkit.tracking.trackers.mlflow_tracking import MlflowTracker
run = Path(sys.argv[1])
tracker = MlflowTracker(run)
info = tracker.start(SimpleNamespace(state=None, name=run.name, tags={}, params={"run": run.name}))
tracker.client.set_terminated(tracker.run_id, "FINISHED")
print(json.dumps(info))
"""


def test_two_first_mlflow_runs_at_once_both_land(tmp_path):
    """The first two --track mlflow runs in a fresh runs folder, started at once, race to make the
    SQLite store and the experiment: the lock beside the store makes both land in one experiment."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (make test installs it)")
    import subprocess
    import sys

    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [subprocess.Popen([sys.executable, "-c", MLFLOW_START, str(runs / f"r{i}")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    started = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert started[0]["experiment_id"] == started[1]["experiment_id"] and started[0]["run_id"] != started[1]["run_id"]
