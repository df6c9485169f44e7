"""transferkit studio: its API on a real server (every endpoint, bad input a 4xx, files confined to
the datasets and runs it was given, requests that change something only from its own page, the
token), the work queue running the CLI's commands, and the main journeys in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from transferkit.config import StudioOptions
from transferkit.errors import UserError
from transferkit.studio.app import create_studio

from helpers import file_tree, make_dataset, make_image, seed_cache

PAGE = {"X-Studio": "1"}
TOKEN = "studio-token-0123456789"


@pytest.fixture(scope="module")
def studio(tmp_path_factory, conversions):
    """`transferkit studio DATA --runs RUNS` for real, on a free port. DATA has a planted copy: a
    training image copied into val under another name. Its cache holds what earlier tests
    converted (`helpers.seed_cache`)."""
    root = tmp_path_factory.mktemp("studio")
    seed_cache(root / "cache", conversions)
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    shutil.copy(data / "train" / "red" / "red0.png", data / "val" / "red" / "planted.png")
    runs = root / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFERKIT_CACHE": str(root / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "studio", str(data), "--runs", str(runs),
                             "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    deadline, lines = time.monotonic() + 60, []
    url = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("studio at "):
            url = re.search(r"at (http://\S+/)", line).group(1)
            break
        if not line and proc.poll() is not None:
            break
    if url is None:
        proc.kill()
        raise AssertionError("the studio did not start:\n" + "".join(lines))
    before = file_tree(data)
    yield {"url": url, "data": data, "runs": runs, "proc": proc, "id": "data"}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert file_tree(data) == before  # nothing in DATA was moved, renamed or changed


def call(studio, path: str, body=None, method: str | None = None, headers: dict | None = None):
    """(status, JSON or bytes) of a request to the studio."""
    data = json.dumps(body).encode() if body is not None else None
    heads = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    request = urllib.request.Request(studio["url"] + path.lstrip("/"), data, heads,
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            raw, ctype, status = r.read(), r.headers.get("content-type", ""), r.status
    except urllib.error.HTTPError as exc:
        raw, ctype, status = exc.read(), exc.headers.get("content-type", ""), exc.code
    return status, json.loads(raw) if "json" in ctype else raw


def post(studio, path, body=None):
    return call(studio, path, body if body is not None else {}, "POST", PAGE)


def wait_job(studio, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, job = call(studio, f"/api/jobs/{job_id}")
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_dataset_views_and_confinement(studio):
    status, state = call(studio, "/api/state")
    assert status == 200 and [d["id"] for d in state["datasets"]] == ["data"]
    assert "linear" in [s["name"] for s in state["strategies"]] and "efficientnet_lite0" in state["models"]
    _, summary = call(studio, "/api/datasets/data")
    assert summary["classes"] == ["blue", "green", "red"] and summary["images"] == 28
    assert summary["counts"]["red"] == {"train": 6, "val": 4, "train_fixed": 6, "val_fixed": 4}
    _, page = call(studio, "/api/datasets/data/images?cls=red&split=val&limit=2&offset=1")
    assert page["total"] == 4 and [i["path"] for i in page["items"]] == ["val/red/red0.jpg", "val/red/red1.jpg"]
    status, thumb = call(studio, "/api/datasets/data/thumb?path=val/red/planted.png")
    assert status == 200 and thumb[:2] == b"\xff\xd8"  # a JPEG
    status, image = call(studio, "/api/datasets/data/image?path=train/red/red0.png")
    assert status == 200 and image == (studio["data"] / "train" / "red" / "red0.png").read_bytes()
    # only the dataset's own images: no traversal, no absolute path, no other file
    secret = studio["data"].parent / "secret.txt"
    secret.write_text("not for the page")
    for bad in ("../secret.txt", str(secret), "train/../../secret.txt", "train/red/../../../secret.txt",
                "%2e%2e/secret.txt", "train/red", ""):
        for route in ("thumb", "image"):
            status, body = call(studio, f"/api/datasets/data/{route}?" + urllib.parse.urlencode({"path": bad}))
            assert 400 <= status < 500 and b"not for the page" not in json.dumps(body).encode(), (bad, status, body)
    for path, expected in (("/api/datasets/nope", 404), ("/api/datasets/data/images?split=test", 400),
                           ("/api/datasets/data/images?cls=purple", 400), ("/api/datasets/data/images?limit=9999", 422),
                           ("/api/datasets/data/images?fixed=maybe", 400), ("/api/runs/..%2F..%2Fetc", 404),
                           ("/api/runs/nope", 404), ("/api/jobs/999", 404), ("/api/compare?a=x&b=y", 404)):
        assert call(studio, path)[0] == expected, path


def test_open_another_folder(studio, tmp_path):
    other = make_dataset(tmp_path / "other data", n_train=2, n_val=1)
    status, opened = post(studio, "/api/datasets", {"path": str(other)})
    assert status == 200 and opened["id"] == "other-data" and opened["images"] == 6
    assert post(studio, "/api/datasets", {"path": str(other)})[1]["id"] == "other-data"  # once
    assert call(studio, "/api/datasets/other-data/thumb?path=train/red/red0.png")[0] == 200
    for bad in ({"path": str(tmp_path / "missing")}, {"path": str(tmp_path / "other data" / "train" / "red")},
                {"path": ""}, {}):
        status, body = post(studio, "/api/datasets", bad)
        assert status == 400 and body["detail"], (bad, body)
    _, state = call(studio, "/api/state")
    assert [d["id"] for d in state["datasets"]] == ["data", "other-data"]  # the refused ones not kept


def test_changes_only_from_the_studios_own_page(studio):
    body = {"path": "train/red/red1.png", "action": "exclude"}
    assert call(studio, "/api/datasets/data/fixes", body, "POST")[0] == 403  # no X-Studio: a plain form post
    for extra in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        assert call(studio, "/api/datasets/data/fixes", body, "POST", {**PAGE, **extra})[0] == 403
    port = re.search(r":(\d+)/", studio["url"]).group(1)
    assert call(studio, "/api/state", headers={"Host": f"rebound.example:{port}"})[0] == 403  # DNS rebinding
    _, fixes = call(studio, "/api/datasets/data/fixes")
    assert fixes["fixes"] == []  # none of those got through


def test_fixes_exclude_relabel_clear_undo(studio):
    status, out = post(studio, "/api/datasets/data/fixes", {"path": "train/blue/blue1.png", "action": "relabel",
                                                            "label": "green", "reason": "greenish"})
    assert status == 200 and out["item"]["fix"]["label"] == "green"
    assert out["summary"]["counts"]["green"]["train_fixed"] == 7 and out["summary"]["fixes"]["relabel"] == 1
    post(studio, "/api/datasets/data/fixes", {"path": "train/blue/blue2.png", "action": "exclude"})
    _, fixes = call(studio, "/api/datasets/data/fixes")
    text = Path(fixes["file"]).read_text().splitlines()
    assert text[1:] == [l for l in text[1:]]  # noqa: E741 - sorted rows follow the header
    assert [r.split(",")[:3] for r in text[2:]] == [["train/blue/blue1.png", "relabel", "green"],
                                                   ["train/blue/blue2.png", "exclude", ""]]
    assert not Path(fixes["file"]).is_relative_to(studio["data"])  # beside the runs, not in DATA
    _, excluded = call(studio, "/api/datasets/data/images?fixed=exclude")
    assert [i["path"] for i in excluded["items"]] == ["train/blue/blue2.png"]
    status, out = post(studio, "/api/datasets/data/undo")
    assert out["item"]["path"] == "train/blue/blue2.png" and out["item"]["fix"] is None
    post(studio, "/api/datasets/data/fixes", {"path": "train/blue/blue1.png", "action": "clear"})
    _, fixes = call(studio, "/api/datasets/data/fixes")
    assert fixes["fixes"] == []
    for bad in ({"path": "train/blue/blue1.png", "action": "relabel", "label": "purple"},
                {"path": "train/blue/blue1.png", "action": "delete"}, {"path": "../x.png", "action": "exclude"},
                {"action": "exclude"}, {"path": 3, "action": "exclude"}):
        assert post(studio, "/api/datasets/data/fixes", bad)[0] == 400, bad
    assert call(studio, "/api/datasets/data/fixes", "not an object", "POST", PAGE)[0] in (400, 422)


def test_doctor_finds_the_planted_copy_seeds_fixes_and_maps_the_features(studio):
    _, job = post(studio, "/api/datasets/data/doctor")
    assert job["command"].startswith(f"transferkit doctor {studio['data']} --out ")
    job = wait_job(studio, job["id"])
    assert job["status"] == "finished", job["log"]
    _, found = call(studio, "/api/datasets/data/findings")
    copies = found["found"]["groups"]["exact copies"]
    assert {i["path"] for i in copies[0]["images"]} == {"train/red/red0.png", "val/red/planted.png"}
    _, out = post(studio, "/api/datasets/data/seed")
    assert out["added"] >= 1 and out["summary"]["counts"]["red"]["val_fixed"] == 3  # the val copy left out
    post(studio, "/api/datasets/data/undo")
    _, m = call(studio, "/api/datasets/data/map")
    points = m["map"]["points"]
    assert len(points) == 28 and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in points)
    assert {p["path"]: p["finding"] for p in points}["val/red/planted.png"] == "exact copies"
    _, similar = call(studio, "/api/datasets/data/similar?path=val/red/planted.png")
    assert similar[0]["path"] == "train/red/red0.png"  # its copy is the nearest
    assert call(studio, "/api/datasets/data/similar?path=../x")[0] == 400


def test_training_queue_runs_compare_export_and_serve(studio):
    _, first = post(studio, "/api/train", {"dataset": "data", "strategy": "linear", "options": {"image_size": 64}})
    _, second = post(studio, "/api/train", {"dataset": "data", "strategy": "linear",
                                            "options": {"image_size": 64, "class_weights": "auto"}})
    _, third = post(studio, "/api/train", {"dataset": "data", "strategy": "finetune", "options": {"epochs": 50,
                                                                                                 "image_size": 64}})
    assert first["command"] == (f"transferkit train {studio['data']} --out {studio['runs'] / first['result']['run']} "
                                "--strategy linear --model efficientnet_lite0 --image-size 64")
    assert second["status"] == "queued"  # one at a time
    post(studio, f"/api/jobs/{third['id']}/stop")  # taken off the queue before it starts
    for job in (first, second):
        assert wait_job(studio, job["id"])["status"] == "finished"
    assert call(studio, f"/api/jobs/{third['id']}")[1]["status"] == "stopped"
    # the same command by hand gives the same run (the page shows what it runs)
    a, b = first["result"]["run"], second["result"]["run"]
    _, runs = call(studio, "/api/runs")
    assert {a, b} <= {r["name"] for r in runs} and all(r["cpu_s"] > 0 for r in runs if r["name"] in (a, b))
    _, view = call(studio, f"/api/runs/{a}")
    assert view["classes"] == ["blue", "green", "red"] and len(view["confusion"]) == 3
    assert view["history"]["unit"] == "iteration" and view["history"]["rows"]
    _, found = call(studio, f"/api/runs/{a}/cell?actual=red&predicted=red")
    cell = found["items"]
    assert cell and all(r["actual"] == r["predicted"] == "red" for r in cell)
    assert found["dataset"] == "data" and cell[0]["rel"].startswith("val/red/")  # fixable from the run's view
    assert call(studio, f"/api/runs/{a}/thumb?i={cell[0]['i']}")[1][:2] == b"\xff\xd8"
    assert call(studio, f"/api/runs/{a}/thumb?i=999")[0] == 404 and call(studio, f"/api/runs/{a}/thumb?i=-1")[0] == 422
    assert call(studio, f"/api/runs/{a}/report")[0] == 200
    # trust: the val images least like the training images, selective prediction, any image's heatmap
    assert view["ood"]["threshold"] is not None and 0 < len(view["unusual"]) <= 24
    assert all("ood_score" in r and "unknown" in r for r in view["unusual"]) and view["selective"][0]["coverage"] == 1
    assert view["unusual"][0]["rel"].startswith("val/")  # fixable from there too
    status, heat = call(studio, f"/api/runs/{a}/heatmap?i={cell[0]['i']}")
    assert status == 200 and heat[:2] == b"\xff\xd8"
    assert call(studio, f"/api/runs/{a}/heatmap?i=999")[0] == 404
    _, compared = call(studio, f"/api/compare?a={a}&b={b}")
    assert compared["settings"]["class_weights"] == ["none", "auto"] and len(compared["history"]) == 2
    assert set(compared["per_class"]) == {"blue", "green", "red"}
    for bad in ({"dataset": "nope"}, {"dataset": "data", "strategy": "magic"},
                {"dataset": "data", "options": {"epochs": 3}},  # the linear head takes no epochs
                {"dataset": "data", "options": {"weights": "/etc/passwd"}}, {"dataset": "data", "options": "fast"}):
        status, body = post(studio, "/api/train", bad)
        assert status in (400, 404) and body["detail"], (bad, body)
    # a running job stopped from the page: SIGINT, the run keeps its best epoch so far
    _, long = post(studio, "/api/train", {"dataset": "data", "strategy": "finetune",
                                          "options": {"epochs": 200, "image_size": 64}})
    deadline = time.monotonic() + 120
    while call(studio, f"/api/jobs/{long['id']}")[1]["progress"]["done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    running = call(studio, f"/api/jobs/{long['id']}")[1]
    assert running["status"] == "running" and running["progress"]["epochs"] == 200 and running["progress"]["eta_s"] > 0
    post(studio, f"/api/jobs/{long['id']}/stop")
    stopped = wait_job(studio, long["id"])
    assert stopped["status"] == "stopped" and stopped["returncode"] == 130
    results = json.loads((studio["runs"] / long["result"]["run"] / "results.json").read_text())
    assert results["interrupted"] and results["stopped_by"] == "SIGINT"
    _, job = post(studio, f"/api/runs/{a}/export", {"formats": "onnx"})
    job = wait_job(studio, job["id"])
    assert job["status"] == "finished", job["log"]
    _, exported = call(studio, f"/api/runs/{a}/export")
    assert exported["artifacts"][0]["file"] == "model.onnx" and exported["artifacts"][0]["passed"]
    assert post(studio, f"/api/runs/{a}/export", {"formats": "gif"})[0] == 400
    _, served = post(studio, f"/api/runs/{a}/serve")
    assert served["url"].startswith("http://127.0.0.1:")
    model = json.loads(urllib.request.urlopen(served["url"] + "model", timeout=30).read())
    assert model["classes"] == ["blue", "green", "red"]
    assert call(studio, f"/api/runs/{a}/serve")[1]["url"] == served["url"]
    assert post(studio, f"/api/runs/{a}/serve/stop")[1] == {"stopped": True}
    assert call(studio, f"/api/runs/{a}/serve")[1]["url"] is None



def test_label_next_queue_answers_into_a_table_and_retrains_from_the_run(studio, tmp_path):
    """The label-next queue: `suggest` over a folder of new photos (a new colour among them) as a
    job; its images served by their row only; answers by key in headless Chromium and by API
    (accept, pick, a new class, skip, clear, a bad name refused) written at once to a labels table
    in the runs folder; "retrain from this run" queues train --from RUN --add TABLE, whose run has
    the parent and the images; the photos are only read."""
    _, job = post(studio, "/api/train", {"dataset": "data", "strategy": "linear", "options": {"image_size": 64}})
    assert wait_job(studio, job["id"])["status"] == "finished", job
    parent = job["result"]["run"]
    photos = tmp_path / "photos"
    for i in range(3):
        make_image(photos / f"blue{i}.png", (30, 40, 220), seed=100 + i)
        make_image(photos / f"yellow{i}.png", (230, 220, 30), seed=200 + i)
    before = file_tree(photos)
    for bad, expected in (({"run": parent, "folder": str(tmp_path / "nope")}, 400), ({"run": "nope", "folder": str(photos)}, 404),
                          ({"run": parent, "folder": str(photos), "n": 0}, 400), ({"run": parent, "folder": str(photos), "n": "x"}, 400)):
        status, body = post(studio, "/api/label", bad)
        assert status == expected and body["detail"], (bad, body)
    status, queue = post(studio, "/api/label", {"run": parent, "folder": str(photos), "n": 5})
    assert status == 200 and queue["status"] == "suggesting" and queue["classes"] == ["blue", "green", "red"]
    assert wait_job(studio, queue["job"])["status"] == "finished"
    qid = queue["id"]
    again = post(studio, "/api/label", {"run": parent, "folder": str(photos), "n": 5})[1]
    assert (again["id"], again["job"]) == (qid, queue["job"])  # the same queue, not suggested again
    _, queue = call(studio, f"/api/label/{qid}")
    items = queue["items"]
    assert queue["status"] == "ready" and len(items) == 5 and all(x["guess"] in queue["classes"] and x["reason"]
                                                                  for x in items)
    status, image = call(studio, f"/api/label/{qid}/image?i=0")
    assert status == 200 and image == Path(items[0]["path"]).read_bytes()
    assert call(studio, f"/api/label/{qid}/image?i=5")[0] == 404 and call(studio, "/api/label/nope")[0] == 404
    assert post(studio, f"/api/label/{qid}/answer", {"i": 0, "label": "=HYPERLINK(1)"})[0] == 400
    assert post(studio, f"/api/label/{qid}/answer", {"i": 9, "label": "blue"})[0] == 404

    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_path:
        pytest.skip("chromium is not installed: `make system-deps` (run by `make test`) installs Debian's package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(studio["url"])
        page.click("#tab-label")  # the queue opened above is shown
        page.wait_for_selector("#label-card[data-i='0'] #label-img")
        assert page.evaluate("document.querySelector('#label-img').naturalWidth") > 0
        page.keyboard.press("Enter")  # the guess
        page.wait_for_selector("#label-card[data-i='1']")
        page.keyboard.press("3")  # the third class: red
        page.wait_for_selector("#label-card[data-i='2']")
        page.keyboard.press("s")
        page.wait_for_selector("#label-card[data-i='3']")
        page.fill("#label-new", "yellow")
        page.click("text=Add as a new class")
        page.wait_for_selector("#label-card[data-i='4']")
        assert "3 of 5 suggestion(s) answered · 1 skipped · 3 image(s)" in page.inner_text("#label-state")
        page.keyboard.press("Backspace")
        page.wait_for_selector("#label-card[data-i='3'] button[data-class='yellow']")  # picked by key from now on
        page.screenshot(path=str(Path(os.environ.get("TRANSFERKIT_SCREENSHOTS", tmp_path)) / "studio_label.png"),
                        full_page=True)
        page.click("#tab-runs")  # a run's own view opens the tab on it
        page.click(f"#runs tr[data-run='{parent}'] a")
        page.click("#label-next")
        page.wait_for_function(f"document.querySelector('#label-run').value === {json.dumps(parent)}")
        browser.close()
    assert not errors, errors
    table = Path(queue["table"])
    assert table.parent == studio["runs"] / "labels"
    rows = table.read_text().splitlines()
    assert rows == ["path,label", f"{items[0]['path']},{items[0]['guess']}", f"{items[1]['path']},red",
                    f"{items[3]['path']},yellow"]
    assert post(studio, f"/api/label/{qid}/answer", {"i": 1, "clear": True})[1]["labelled"] == 2
    _, job = post(studio, f"/api/label/{qid}/retrain")
    assert f"--from {studio['runs'] / parent} --add {table}" in job["command"]
    done = wait_job(studio, job["id"])
    assert done["status"] == "finished", done["log"]
    results = json.loads((studio["runs"] / job["result"]["run"] / "results.json").read_text())
    assert results["added"]["images"] == 2 and "yellow" in results["classes"]
    assert results["parent"]["run"] == str(studio["runs"] / parent)
    assert file_tree(photos) == before

def test_token_cookie_and_bearer(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    options = StudioOptions(runs_dir=str(tmp_path / "runs"), host="0.0.0.0", token=TOKEN)
    with TestClient(create_studio([data], options), base_url="http://studio.lan:8765") as client:
        assert client.get("/api/state").status_code == 401
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong-token-0000000000").status_code == 401
        assert client.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        opened = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert opened.status_code == 303 and "httponly" in opened.headers["set-cookie"].lower()
        assert "samesite=strict" in opened.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200 and client.get("/api/state").status_code == 200  # the cookie
    with pytest.raises(UserError, match="--token"):
        StudioOptions(host="0.0.0.0")


def test_journeys_in_headless_chromium(studio, tmp_path):
    """Open the dataset, see the planted copy, exclude it, train, see the run appear, compare two
    runs, click a confusion cell; nothing loaded from elsewhere; screenshots kept."""
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_path:
        pytest.skip("chromium is not installed: `make system-deps` (run by `make test`) installs Debian's package")
    shots = Path(os.environ.get("TRANSFERKIT_SCREENSHOTS", tmp_path))
    if not call(studio, "/api/datasets/data/findings")[1]["found"]:  # run alone: the doctor first
        assert wait_job(studio, post(studio, "/api/datasets/data/doctor")[1]["id"])["status"] == "finished"
    for job in call(studio, "/api/jobs")[1]:  # and a run to compare with
        wait_job(studio, job["id"])
    if not [r for r in call(studio, "/api/runs")[1] if r["status"] == "finished"]:
        assert wait_job(studio, post(studio, "/api/train", {"dataset": "data"})[1]["id"])["status"] == "finished"
    requested = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requested.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(studio["url"])
        page.wait_for_selector("#classes tr:nth-child(4)")
        page.wait_for_selector("#findings .finding[data-kind='exact copies']")  # the doctor ran (previous test)
        copy = page.locator("#findings .finding[data-kind='exact copies'] .thumb[data-path='val/red/planted.png']")
        copy.get_by_role("button", name="Exclude").click()
        page.wait_for_selector("#findings .thumb.exclude[data-path='val/red/planted.png']")
        assert page.inner_text("#fixes-line").startswith("1 excluded")
        page.wait_for_function("document.querySelector('#map-legend').children.length >= 3")  # the map drawn
        page.screenshot(path=str(shots / "studio_data.png"), full_page=True)
        page.click("#tab-train")
        page.select_option("#train-strategy", "finetune")
        page.fill("input[name=lr]", "abc")  # refused on its field, in the page's words; nothing queued
        jobs_before = len(call(studio, "/api/jobs")[1])
        page.click("#train-form button[type=submit]")
        page.wait_for_selector("#train-error:not(:empty)")  # (selectors: the page's CSP allows no eval)
        assert "Learning rate: 'abc' is not a number" in page.inner_text("#train-error")
        assert page.get_attribute("input[name=lr]", "aria-invalid") == "true"
        assert len(call(studio, "/api/jobs")[1]) == jobs_before
        page.fill("input[name=lr]", "")
        page.select_option("#train-strategy", "linear")
        page.fill("input[name=epochs]", "")
        page.locator("#train-form").evaluate("f => { f.elements['seed'].value = '3'; }")
        page.click("#train-form button[type=submit]")
        page.wait_for_selector("#jobs .job:first-child.finished", timeout=180_000)  # the newest first
        command = page.inner_text("#jobs .job:first-child code")
        assert "--fixes" in command and "--seed 3" in command  # the excluded copy is left out of this run
        page.click("#jobs .job:first-child details summary")  # its output stays open while the list polls
        page.wait_for_timeout(2500)
        assert page.get_attribute("#jobs .job:first-child details", "open") is not None
        page.screenshot(path=str(shots / "studio_jobs.png"), full_page=True)
        page.click("#tab-runs")
        page.wait_for_selector("#runs tr[data-run]")
        names = page.eval_on_selector_all("#runs tr[data-run]", "rows => rows.filter(r => !r.querySelector("
                                          "'input').disabled).map(r => r.dataset.run)")
        assert len(names) >= 2
        for name in names[:2]:
            page.check(f"#runs tr[data-run='{name}'] input[type=checkbox]")
        page.click("#compare")
        page.wait_for_selector("#compare-classes tr:nth-child(4)")
        assert "seed" in page.inner_text("#run-view") or "fixes" in page.inner_text("#run-view")
        page.screenshot(path=str(shots / "studio_compare.png"), full_page=True)
        page.click(f"#runs tr[data-run='{names[0]}'] a")
        page.wait_for_selector("table.confusion td.cell")
        page.click("#serve-run")  # served from the page: still answering after the rest of the journey
        page.wait_for_selector("#serve-line a", timeout=120_000)
        served_at, served = time.monotonic(), page.get_attribute("#serve-line a", "href")
        assert page.get_attribute("#serve-camera", "href") == served + "#camera"  # the page with its camera on
        page.select_option("#export-formats", "onnx")
        page.click("text=Export (checked)")  # queued; checked while the rest of the journey goes on
        page.click("table.confusion tr:nth-child(2) td.cell >> nth=0")  # blue predicted as blue
        page.wait_for_selector("#cell-images .thumb img")
        assert "blue predicted as blue" in page.inner_text("#cell-images")
        page.screenshot(path=str(shots / "studio_run.png"), full_page=True)
        # the web server's idle worker threads end after 10 s idle; the served model once died with
        # the one that started it
        page.wait_for_timeout(max(0, 12 - (time.monotonic() - served_at)) * 1000)
        for job in call(studio, "/api/jobs")[1]:
            assert wait_job(studio, job["id"])["status"] in ("finished", "stopped"), job["log"]
        page.click(f"#runs tr[data-run='{names[0]}'] a")  # the run again: its export's table
        page.wait_for_selector("#export-table table tr:nth-child(2)")
        assert "yes" in page.inner_text("#export-table")
        other = browser.new_page()
        other.goto(served)
        other.wait_for_selector("body[data-ready=true]", timeout=30_000)
        other.set_input_files("#files", str(studio["data"] / "val" / "red" / "red0.jpg"))
        other.wait_for_selector("li.result[data-state=done]", timeout=30_000)
        other.screenshot(path=str(shots / "studio_served.png"), full_page=True)
        page.click("#serve-run")  # stop serving
        page.wait_for_selector("#serve-line a", state="detached")
        browser.close()
    assert not errors, errors
    assert all(u.startswith(studio["url"]) or u.startswith("data:") for u in requested), \
        [u for u in requested if not u.startswith(studio["url"])]
    assert (shots / "studio_data.png").stat().st_size > 20_000
