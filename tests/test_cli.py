"""The real commands end to end on tiny data: train, eval, predict, errors, --help."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from helpers import make_dataset
from transferkit.cli import main

RUN_FILES = ["model.safetensors", "model.json", "config.yaml", "metrics.csv", "results.json", "metrics.json",
             "predictions.csv", "misclassified.csv", "predictions.png", "top_losses.png",
             "confusion_matrix_normalized.png", "report.html",
             "curves.png", "confusion_matrix.png"]


def add_bad_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80, 3), np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:300])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root / "data", n_train=6, n_val=3)
    add_bad_files(data / "train" / "red")
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    run = root / "run"
    rc = main(["train", str(data), "--out", str(run), "--quiet"])
    assert rc == 0
    assert before == {p: p.stat().st_mtime_ns for p in data.rglob("*")}  # user's files untouched
    return data, run


def test_train_writes_every_file_and_results(trained):
    data, run = trained
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    for key in ("val_acc", "head_iterations", "strategy", "backbone", "classes", "num_train", "num_val",
                "skipped_files", "wall_s"):
        assert key in results
    assert results["classes"] == ["blue", "red"]
    assert results["num_train"] == 12 and results["num_val"] == 6
    assert results["val_acc"] == 1.0  # colours are trivially separable
    skipped = {d["path"].rsplit("/", 1)[-1]: d["reason"] for d in results["skipped_files"]}
    assert set(skipped) == {"empty.jpg", "readme.txt", "cut.jpg"}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    # the default head is a logistic regression: one row per chunk of L-BFGS iterations
    assert set(rows[0]) >= {"iteration", "train_loss", "val_acc"}
    assert int(rows[-1]["iteration"]) == results["head_iterations"] and results["epochs_run"] is None
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] and "torch" in meta["versions"]


def test_skipped_files_warned_by_name(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    add_bad_files(data / "train" / "blue")
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    for name in ("empty.jpg", "readme.txt", "cut.jpg"):
        assert any(name in line and line.startswith("warning: skipped") for line in err.splitlines()), err


def test_eval_agrees_with_results(trained, capsys):
    data, run = trained
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "difference 0.0000" in out
    assert main(["eval", str(run), str(data), "--out", str(run / "eval-held-out")]) == 0
    assert f"metrics: {run / 'eval-held-out' / 'metrics.json'}" in capsys.readouterr().out
    assert json.loads((run / "eval-held-out" / "metrics.json").read_text())["accuracy"] == 1.0


def test_predict_csv_and_json(trained, tmp_path):
    data, run = trained
    out_csv = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data / "val"), str(data / "train" / "red" / "cut.jpg"),
                 "--output", str(out_csv)]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 7  # 6 val images (recursively) + 1 unreadable file
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in r["path"] for r in good)  # class folder names, not indices
    assert set(rows[0]) >= {"path", "label", "probability", "top1_label", "top2_probability"}
    out_json = tmp_path / "p.json"
    assert main(["predict", str(run), str(data / "val" / "red"), "--output", str(out_json), "--top-k", "1"]) == 0
    preds = json.loads(out_json.read_text())
    assert len(preds) == 3 and all(p["label"] == "red" for p in preds)


def test_python_api(trained):
    import transferkit

    data, run = trained
    model = transferkit.load(run)
    pred = model.predict([str(data / "val" / "blue" / "blue0.jpg")], top_k=2)[0]
    assert pred.label == "blue" and len(pred.top_k) == 2 and 0.5 < pred.probability <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "/nonexistent/data"], "dataset folder not found"),
        (["train", "{data}", "--strategy", "magic"], "--strategy must be one of"),
        (["train", "{data}", "--model", "resnet9000"], "unknown model"),
        (["train", "{data}", "--lr", "-1"], "--lr must be > 0"),
        (["train", "{data}", "--weights", "/no/such.pth"], "weights file not found"),
        (["eval", "/no/run"], "run folder not found"),
        (["predict", "/no/run", "x.jpg"], "not found"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    rc = main([a.format(data=data) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_out_refuses_a_foreign_folder(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    assert main(["train", str(data), "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert "not a transferkit run" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_yaml_config_and_unknown_key(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=1)
    (tmp_path / "c.yaml").write_text("epochs: 3\nbatch_sise: 4\n")
    assert main(["train", str(data), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("epochs: ten\n")
    assert main(["train", str(data), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "option 'epochs' must be of type int" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("class_weights: auto\nseed: 5\n")
    run = tmp_path / "r"
    assert main(["train", str(data), "--config", str(tmp_path / "c.yaml"), "--seed", "7", "--out", str(run), "--quiet"]) == 0
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["class_weights"] == "auto" and cfg["seed"] == 7  # flags override the file


@pytest.mark.parametrize("command", [[], ["train"], ["lr-find"], ["eval"], ["predict"], ["models"], ["summary"], ["cache"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--help"])
    assert exc.value.code == 0
    assert "usage: transferkit" in capsys.readouterr().out


def test_models_lists_offline_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "yes" in out


def test_summary_resnet18_reports_published_total(capsys):
    assert main(["summary", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 11,689,512" in out and "Trainable params: 11,689,512" in out


def test_summary_linear_marks_backbone_frozen(capsys):
    assert main(["summary", "squeezenet1_1", "--num-classes", "5", "--strategy", "linear"]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 2,565" in out  # only the new head: 512 * 5 + 5
    assert "Non-trainable params: 722,496" in out
