"""The light install (`pip install transferkit`, no torch, torchvision or timm): a run folder made
elsewhere predicts, is evaluated, serves and examines a dataset (doctor) from the conversions it
carries, with an empty cache; an exported model predicts; what needs the train extra says so in
one line. Simulated by `light.light_site`: this environment less the train extra's packages."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import transferkit
from helpers import file_tree, make_dataset, seed_cache
from light import light_command, light_env, light_site
from transferkit.cli import main


@pytest.fixture(scope="module")
def made_elsewhere(tmp_path_factory, conversions):
    """A default run (a head on frozen features), a fine-tuned one and an ONNX export, made with
    the full install (its cache holding what earlier tests converted); what the full install
    predicts with them; and the light site."""
    root = tmp_path_factory.mktemp("light")
    seed_cache(root / "cache", conversions)
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=6, n_val=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE", str(root / "cache"))
        frozen = transferkit.train(data, out=str(root / "frozen"), image_size=64, quiet=True).path
        tuned = transferkit.train(data, out=str(root / "tuned"), model="squeezenet1_1", weights="none",
                                  strategy="finetune", epochs=1, image_size=32, quiet=True).path
        assert main(["export", str(frozen), "--formats", "onnx", "--out", str(root / "export")]) == 0
        for run in (frozen, tuned):
            assert main(["predict", str(run), str(data / "val"), "--output", str(root / f"{run.name}.csv")]) == 0
        assert main(["doctor", str(data), "--model", str(frozen), "--out", str(root / "doctor"), "--quiet"]) == 0
    return {"root": root, "data": data, "frozen": frozen, "tuned": tuned, "site": light_site(root / "site")}


def _light(made: dict, *args: str, check: bool = True, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = light_env(made["site"], TRANSFERKIT_CACHE=str(cache or made["root"] / "light-cache"))
    proc = subprocess.run(light_command(made["site"], *args), capture_output=True, text=True, timeout=300, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_light_site_has_no_torch(made_elsewhere):
    code = ("import importlib.util as u, importlib.metadata as m\n"
            "assert all(u.find_spec(n) is None for n in ('torch', 'torchvision', 'timm', 'onnx'))\n"
            "try:\n    m.version('torch')\nexcept m.PackageNotFoundError:\n    print('no torch')\n")
    proc = subprocess.run(light_command(made_elsewhere["site"])[:2] + ["-c", code], capture_output=True, text=True,
                          env=light_env(made_elsewhere["site"]), timeout=60)
    assert proc.stdout.strip() == "no torch", proc.stderr


def test_a_run_made_elsewhere_predicts_and_is_evaluated_without_torch(made_elsewhere):
    """From the conversions in RUN/converted/ (the cache is empty): the same predictions, byte for
    byte, as the full install's, and the same evaluation."""
    made, root = made_elsewhere, made_elsewhere["root"]
    assert {p.name for p in (made["frozen"] / "converted").iterdir()} >= {"features.tkx"}
    assert {p.name for p in (made["tuned"] / "converted").iterdir()} == {"classifier.tkx"}
    for run in (made["frozen"], made["tuned"]):
        out = root / f"light-{run.name}.csv"
        _light(made, "predict", str(run), str(made["data"] / "val"), "--output", str(out))
        assert out.read_bytes() == (root / f"{run.name}.csv").read_bytes()
        proc = _light(made, "eval", str(run), str(made["data"]), "--out", str(root / f"eval-{run.name}"))
        assert "converting" not in proc.stdout + proc.stderr  # nothing needed torch
        light = json.loads((root / f"eval-{run.name}" / "metrics.json").read_text())
        assert light["accuracy"] == json.loads((run / "results.json").read_text())["val_acc"]
    assert not any((root / "light-cache").rglob("*.onnx"))  # nothing was converted into the cache


def test_doctor_uses_the_run_folders_backbone_without_torch(made_elsewhere):
    made, root = made_elsewhere, made_elsewhere["root"]
    _light(made, "doctor", str(made["data"]), "--model", str(made["frozen"]), "--out", str(root / "light-doctor"),
           cache=root / "doctor-cache")
    light, full = (json.loads((root / name / "doctor.json").read_text()) for name in ("light-doctor", "doctor"))
    for report in (light, full):
        report.pop("timings")
    assert light == full
    proc = _light(made, "doctor", str(made["data"]), "--model", str(made["tuned"]), check=False)
    assert proc.returncode == 2 and "fine-tuned its backbone" in proc.stderr


def test_the_exported_model_predicts_without_torch(made_elsewhere):
    made, root = made_elsewhere, made_elsewhere["root"]
    model = next((root / "export").glob("*.onnx"))
    _light(made, "predict", str(model), str(made["data"] / "val"), "--output", str(root / "export.csv"))
    full = [line.split(",")[:2] for line in (root / "frozen.csv").read_text().splitlines()]
    assert [line.split(",")[:2] for line in (root / "export.csv").read_text().splitlines()] == full


def test_a_run_made_elsewhere_serves_without_torch(made_elsewhere):
    made = made_elsewhere
    env = light_env(made["site"], TRANSFERKIT_CACHE=str(made["root"] / "serve-cache"), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen(light_command(made["site"], "serve", str(made["frozen"]), "--port", "0"),
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not lines or not lines[-1].startswith("serving "):
            lines.append(proc.stderr.readline())
            assert lines[-1] or proc.poll() is None, "".join(lines)
            assert time.monotonic() - started < 120, "".join(lines)
        url = re.search(r"at (http://\S+/)", "".join(lines)).group(1)
        image = next((made["data"] / "val" / "red").iterdir()).read_bytes()
        request = urllib.request.Request(url + "predict", data=image, headers={"content-type": "image/jpeg"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer["predictions"][0]["label"] == "red"
        assert json.loads(urllib.request.urlopen(url + "model", timeout=10).read())["engine"] == "onnxruntime"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_what_needs_torch_names_the_extra_in_one_line(made_elsewhere):
    made = made_elsewhere
    for args in (["train", str(made["data"]), "--out", str(made["root"] / "nope")],
                 ["predict", str(made["frozen"]), str(made["data"] / "val"), "--engine", "torch"],
                 ["export", str(made["frozen"]), "--out", str(made["root"] / "nope-export")],
                 ["lr-find", str(made["data"])], ["models"]):
        proc = _light(made, *args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().endswith("pip install 'transferkit[train]'"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (made["root"] / "nope").exists() and not (made["root"] / "nope-export").exists()


def test_what_a_run_carries_is_its_own(tmp_path, monkeypatch):
    """--no-cache converts into a temporary cache, never the user's; training again into a run's
    folder leaves none of the earlier run's conversions behind; deleting the run removes them."""
    from transferkit.runs import remove_run

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "users-cache"))
    data = make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=4, n_val=2)
    tiny = dict(model="squeezenet1_1", weights="none", image_size=32, quiet=True)
    run = transferkit.train(data, out=str(tmp_path / "run"), **tiny).path
    assert {p.name for p in (run / "converted").iterdir()} >= {"features.tkx"}
    # a second run's copy of the conversion is a link to the cache's file (nothing written), and
    # the cache replacing that file leaves the run's copy as it was
    other = transferkit.train(data, out=str(tmp_path / "other"), **tiny).path
    carried = other / "converted" / "features.tkx"
    cached = next(p for p in (tmp_path / "users-cache" / "engines").glob("*.onnx")
                  if p.stat().st_ino == carried.stat().st_ino)
    kept = carried.read_bytes()
    cached.with_name("new").write_bytes(b"another conversion")
    cached.with_name("new").replace(cached)
    assert carried.read_bytes() == kept
    cached.write_bytes(kept)
    before = file_tree(tmp_path / "users-cache")
    transferkit.train(data, out=str(run), strategy="finetune", epochs=1, no_cache=True, **tiny)
    assert {p.name for p in (run / "converted").iterdir()} == {"classifier.tkx"}
    assert file_tree(tmp_path / "users-cache") == before  # its conversion went into a temporary cache
    (run / "notes.txt").write_text("mine")
    assert remove_run(run) == ["notes.txt"]  # the user's file stays; every file of the run is gone
