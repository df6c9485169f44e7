"""Evaluation outputs: scikit-learn's numbers, the plots, misclassified.csv, report.html (checked
in headless Chromium), `transferkit report` and `transferkit eval`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

import transferkit
from helpers import make_dataset, shared_dataset
from transferkit import worker as report_worker
from transferkit.evaluation import metrics, plots, report
from transferkit.cli import main

EVAL_FILES = ["metrics.json", "predictions.csv", "misclassified.csv", "confusion_matrix.png",
              "confusion_matrix_normalized.png", "predictions.png", "top_losses.png", "report.html"]


def _fake(n_classes: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), y] += 1.5  # mostly right, some errors
    return y, logits


def test_per_class_numbers_equal_scikit_learns_classification_report():
    classes = [f"c{i}" for i in range(6)]
    y, logits = _fake(6, 200)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = logits.argmax(1)
    ours = metrics.summarize(y, pred, classes, probs)
    ref = classification_report(y, pred, target_names=classes, output_dict=True, zero_division=0)
    for c in classes:
        m = ours["per_class"][c]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == (
            ref[c]["precision"], ref[c]["recall"], ref[c]["f1-score"], ref[c]["support"])
    for name in ("macro", "weighted"):
        assert ours[f"{name}_avg"]["f1"] == ref[f"{name} avg"]["f1-score"]
    assert ours["accuracy"] == ref["accuracy"]
    assert ours["top5_accuracy"] == top_k_accuracy_score(y, probs, k=5)
    cm = confusion_matrix(y, pred)
    assert ours["confusion_matrix"] == cm.tolist()
    np.testing.assert_allclose(np.array(ours["confusion_matrix_normalized"]).sum(1), 1.0, atol=1e-3)
    first = ours["most_confused"][0]
    off = cm - np.diag(np.diag(cm))
    assert first["count"] == off.max()
    assert metrics.summarize(y[:10], pred[:10], classes[:2] + ["x", "y"], None)["top5_accuracy"] is None
    named = metrics.summarize(y, pred, ["accuracy", "macro avg", "c2", "c3", "c4", "c5"], probs)  # folder names
    assert named["per_class"]["accuracy"] == ours["per_class"]["c0"]


def test_worker_process_writes_what_this_process_would(tmp_path):
    """The evaluation and the report done by the Worker child equal the in-process ones."""
    classes = ["a", "b", "c"]
    y, logits = _fake(3, 30)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    paths = [str(img)] * 30
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    expected = report.write_evaluation(here, paths, y, logits, classes, {"skipped_files": []})
    warnings = []
    with report_worker.Worker(warnings.append, always=True) as worker:
        assert worker.proc is not None
        got = worker.call(report_worker.WRITE_EVALUATION, there, paths, y, logits, classes, {"skipped_files": []})
        page = worker.call(report_worker.RENDER, there)
    assert not warnings and got == expected and page == there / "report.html"
    for name in ("metrics.json", "predictions.csv"):
        assert (here / name).read_text() == (there / name).read_text()
    assert all((there / name).is_file() for name in EVAL_FILES)


def test_worker_that_cannot_run_falls_back_with_a_warning(tmp_path, monkeypatch):
    """A child that dies (here: not Python at all) costs a warning, never an output."""
    monkeypatch.setattr(report_worker.sys, "executable", shutil.which("false"))
    y, logits = _fake(2, 10)
    warnings = []
    with report_worker.Worker(warnings.append, always=True) as worker:
        summary = worker.call(report_worker.WRITE_EVALUATION, tmp_path, ["p.jpg"] * 10, y, logits, ["a", "b"])
        worker.call(report_worker.RENDER, tmp_path)
    assert summary["num_images"] == 10 and (tmp_path / "report.html").is_file()
    assert len(warnings) == 1 and "the report process failed" in warnings[0]


def test_many_classes_draw_the_most_confused_sub_matrix(tmp_path):
    classes = [f"class{i:03d}" for i in range(120)]
    y, logits = _fake(120, 600, seed=1)
    paths = [str(tmp_path / f"gone{i}.jpg") for i in range(600)]  # images that no longer exist
    summary = report.write_evaluation(tmp_path, paths, y, logits, classes)
    page = report.render(tmp_path)
    assert np.array(summary["confusion_matrix"]).shape == (120, 120)  # full matrix in metrics.json
    html = page.read_text()
    assert "the 30 most-confused of 120 classes" in html
    keep = plots.confusion_subset(np.array(summary["confusion_matrix"]))
    off = np.array(summary["confusion_matrix"]) - np.diag(np.diag(summary["confusion_matrix"]))
    errors = off.sum(0) + off.sum(1)
    assert len(keep) == 30 and min(errors[keep]) >= max(np.delete(errors, keep))
    for name in EVAL_FILES:
        assert (tmp_path / name).is_file(), name
    assert "class119" in html and "image not found" in html


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    # a red image among the blue validation images: at least one error to show
    shutil.copy(data / "val" / "red" / "red0.jpg", data / "val" / "blue" / "odd.jpg")
    return data, transferkit.train(data, out=str(root / "run"), quiet=True).path


def test_train_writes_every_evaluation_file(run):
    data, run_dir = run
    for name in EVAL_FILES + ["curves.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["classes"] == ["blue", "green", "red"] and saved["num_images"] == 10
    wrong = _rows(run_dir / "misclassified.csv")
    preds = _rows(run_dir / "predictions.csv")
    assert len(preds) == 10
    assert [r["path"] for r in wrong] == [r["path"] for r in sorted(
        (r for r in preds if r["actual"] != r["predicted"]), key=lambda r: -float(r["probability"]))]
    assert any(r["path"].endswith("odd.jpg") and r["actual"] == "blue" for r in wrong)
    assert set(wrong[0]) == {"path", "actual", "predicted", "probability"}


def test_a_warm_run_copies_the_evaluation_and_report_an_identical_run_made(run, tmp_path, monkeypatch):
    """The same images, features and options: the evaluation and report files are the first
    run's, byte for byte, copied from the cache (the worker is asked nothing: no scikit-learn or
    matplotlib); the page is the run's own; --no-report takes the evaluation's files from it. A
    val image touched (new modification time) makes them again."""
    data, _ = run
    run_dir = transferkit.train(data, out=str(tmp_path / "first"), strategy="linear", quiet=True).path
    asked = []
    monkeypatch.setattr(report_worker.Worker, "submit", lambda self, name, *a: asked.append(name))
    again = transferkit.train(data, out=str(tmp_path / "again"), strategy="linear", quiet=True).path
    assert asked == []
    for name in EVAL_FILES + ["curves.png", "reliability.png", "heatmaps.json"]:
        if name not in ("report.html",) and (run_dir / name).is_file():
            assert (again / name).read_bytes() == (run_dir / name).read_bytes(), name
    for heatmap in (run_dir / "heatmaps").glob("*.jpg"):
        assert (again / "heatmaps" / heatmap.name).read_bytes() == heatmap.read_bytes()
    page = (again / "report.html").read_text()
    assert "transferkit report: again" in page and str(again) in page
    bare = transferkit.train(data, out=str(tmp_path / "bare"), strategy="linear", quiet=True, no_report=True).path
    assert asked == [] and not (bare / "report.html").exists() and not list(bare.glob("*.png"))
    assert (bare / "metrics.json").read_bytes() == (run_dir / "metrics.json").read_bytes()  # (--no-report: from it)
    monkeypatch.undo()
    odd = data / "val" / "blue" / "odd.jpg"
    stat = odd.stat()
    os.utime(odd, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    asked, submit = [], report_worker.Worker.submit

    def spy(self, name, *args):
        asked.append(name)
        return submit(self, name, *args)
    monkeypatch.setattr(report_worker.Worker, "submit", spy)
    try:
        touched = transferkit.train(data, out=str(tmp_path / "touched"), strategy="linear", quiet=True).path
    finally:
        monkeypatch.undo()
        os.utime(odd, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (touched / "report.html").is_file() and (touched / "metrics.json").is_file()
    assert asked and asked[0] == report_worker.EVALUATE_AND_PLOT


def test_report_command_rebuilds_the_page_and_plots_without_the_model(run, tmp_path, capsys):
    _, run_dir = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ["report.html", "predictions.png", "top_losses.png", "confusion_matrix.png", "curves.png",
                 "model.safetensors"]:
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    for name in EVAL_FILES + ["curves.png"]:
        assert (copy / name).is_file(), name
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "has no metrics.json" in capsys.readouterr().err


def test_eval_writes_its_own_report_folder(run, capsys):
    data, run_dir = run
    assert main(["eval", str(run_dir), str(data)]) == 0
    out = capsys.readouterr().out
    folder = run_dir / "eval-data"
    assert f"report: {folder / 'report.html'}" in out and "precision" in out
    for name in EVAL_FILES:
        assert (folder / name).is_file(), name
    page = (folder / "report.html").read_text()
    assert f"<td>run</td><td>{run_dir}</td>" in page and "<td>strategy</td><td>linear</td>" in page
    assert main(["eval", str(run_dir), str(data)]) == 0  # a second eval never overwrites the first
    assert (run_dir / "eval-data-2" / "report.html").is_file()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--out", str(data / "train")]) == 2  # the run's data: refused
    assert "never writes into your data" in capsys.readouterr().err
    mine = data.parent / "my-notes"  # a folder of the user's: refused
    mine.mkdir(exist_ok=True)
    (mine / "notes.txt").write_text("mine")
    assert main(["eval", str(run_dir), "--out", str(mine)]) == 2
    assert "is not an eval folder" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "mine"


# -- the page in a real browser ------------------------------------------------------------------


def _chromium() -> str:
    """Debian's chromium, which `make test` installs (its `system-deps` step); else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed: `make system-deps` (run by `make test`) installs Debian's package")
    return found


# Appended to a copy of the page: after everything loaded, write what the test checks into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = {images: imgs.length,
               broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
               per_class: [...document.querySelectorAll("table.per-class tbody tr")].map(
                 tr => [...tr.cells].map(td => td.textContent))};
  const pre = document.createElement("pre");
  pre.id = "tk-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_every_image_and_class(tmp_path_factory):
    """The acceptance run: `transferkit train` on flower_photos_small; its report.html in headless
    Chromium: every image loaded, the per-class table equal to metrics.json; a screenshot kept."""
    browser = _chromium()
    data = shared_dataset("flower_photos_small")
    run_dir = tmp_path_factory.mktemp("flowers") / "run"
    assert main(["train", str(data), "--out", str(run_dir), "--quiet"]) == 0
    for name in EVAL_FILES + ["curves.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    page = run_dir / "report.html"
    probe = run_dir / "report_probe.html"  # same folder: the same relative paths resolve
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=180)
    probe.unlink()
    dom = proc.stdout
    assert 'id="tk-probe"' in dom, proc.stderr[-2000:]
    found = json.loads(__import__("html").unescape(dom.split('id="tk-probe">')[1].split("</pre>")[0]))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert found["images"] >= 5 and found["broken"] == []
    table = {row[0]: row[1:] for row in found["per_class"]}
    for c, m in saved["per_class"].items():
        assert table[c] == [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
    shot = run_dir / "report_screenshot.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.stat().st_size > 10_000


def test_no_report_skips_the_plots_and_report_makes_them_later(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_train=4, n_val=2)
    run_dir = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run_dir), "--no-report", "--quiet"]) == 0
    assert (run_dir / "metrics.json").is_file() and (run_dir / "predictions.csv").is_file()
    assert not list(run_dir.glob("*.png")) and not (run_dir / "report.html").exists()
    assert main(["report", str(run_dir)]) == 0
    for name in EVAL_FILES + ["curves.png"]:
        assert (run_dir / name).is_file(), name


def test_class_names_are_drawn_as_text_not_math(tmp_path):
    classes = ["$\\frac{1$ off", "plain"]  # matplotlib would parse this as broken math and fail
    y = np.array([0, 1, 0, 1])
    report.write_evaluation(tmp_path, [str(tmp_path / f"{i}.jpg") for i in range(4)], y,
                            np.eye(2)[[1, 1, 0, 1]] * 3, classes)
    assert report.render(tmp_path).is_file()
    assert "$\\frac{1$ off" in json.loads((tmp_path / "metrics.json").read_text())["per_class"]
