"""Multi-label data (issue 39): label cells split on --label-delim, an image on several rows, an
image with no label; the task chosen from the data; per-class logistic heads with thresholds
chosen out of fold; fine-tuning on each class's sigmoid; mAP and the per-class numbers; the
`labels` column of predict, serve (own API and the Open Inference Protocol), the MLflow flavour's
DataFrame, eval and export's gate in multi-label terms."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import make_multilabel
from transferkit.cli import main

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)
FLAGS = ["--model", "squeezenet1_1", "--weights", "none", "--image-size", "64", "--quiet"]
SETS = {"img000": {"blue"}, "img003": {"blue", "red"}, "img006": set()}  # (make_multilabel's cycle)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A multi-label set (labels joined by ';') and the run the default strategy trains on it."""
    root = tmp_path_factory.mktemp("multi")
    table = make_multilabel(root / "data", n=42, delim=";")
    run = transferkit.train(root / "data", out=str(root / "run"), labels=str(table), label_delim=";", **TINY)
    return {"root": root, "data": root / "data", "table": table, "run": Path(run.path), "results": run.results}


def test_a_multilabel_table_trains_the_task_its_thresholds_and_its_numbers(multi):
    results, run = multi["results"], multi["run"]
    assert results["task"]["kind"] == "multilabel" and results["task"]["label_delim"] == ";"
    m = results["metrics"]
    assert m["task"] == "multilabel" and set(m["per_class"]) == {"blue", "green", "red"}
    for key in ("map_macro", "map_micro", "subset_accuracy", "hamming_loss"):
        assert 0 <= m[key] <= 1, key
    assert m["map_macro"] > 0.9  # bands of colour: easy for the head
    assert m["images_without_labels"] >= 1  # the images with no label are kept (negative for every class)
    meta = json.loads((run / "model.json").read_text())
    thresholds = meta["task"]["thresholds"]
    assert len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    assert [m["per_class"][c]["threshold"] for c in ("blue", "green", "red")] == pytest.approx(thresholds)
    split = json.loads((run / "split.json").read_text())
    assert all(isinstance(labels, list) for _, labels in split["train"] + split["val"])
    # every label is on both sides of the split (stratified by each image's rarest label)
    for side in ("train", "val"):
        assert {c for _, labels in split[side] for c in labels} == {0, 1, 2}
    page = (run / "report.html").read_text()
    assert "mAP (macro)" in page and "precision-recall" in page
    for name in ("pr_curves.png", "cooccurrence.png", "cooccurrence_predicted.png", "misclassified.csv"):
        assert (run / name).is_file(), name
    cooc = np.array(m["cooccurrence"])
    assert (cooc == cooc.T).all() and np.diag(cooc).tolist() == [m["per_class"][c]["support"]
                                                                  for c in ("blue", "green", "red")]


def test_predict_writes_each_images_set_and_every_class_sigmoid(multi, tmp_path, capsys):
    images = [str(multi["data"] / "images" / f"{name}.png") for name in SETS]
    out = tmp_path / "p.json"
    assert main(["predict", str(multi["run"]), *images, "--top-k", "3", "--output", str(out)]) == 0
    got = {Path(p["path"]).stem: p for p in json.loads(out.read_text())}
    for name, labels in SETS.items():
        assert set(got[name]["labels"]) == labels, (name, got[name])
        probs = {t["label"]: t["probability"] for t in got[name]["top_k"]}
        assert set(probs) == {"blue", "green", "red"} and sum(probs.values()) != pytest.approx(1.0)
    capsys.readouterr()
    assert main(["predict", str(multi["run"]), *images]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0])[:4] == ["path", "label", "probability", "labels"]
    assert [set(filter(None, r["labels"].split(";"))) for r in rows] == list(SETS.values())
    # the same through the Python API
    with transferkit.load(multi["run"]) as model:
        assert [set(p.labels) for p in model.predict(images)] == list(SETS.values())


def test_eval_and_export_measure_map_and_the_sets(multi, tmp_path, capsys):
    run = multi["run"]
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "ev")]) == 0
    said = capsys.readouterr().out
    assert "mAP macro" in said and "difference 0.0000" in said, said
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["map_macro"] == \
        pytest.approx(multi["results"]["metrics"]["map_macro"], abs=1e-6)
    # on the whole table (its own delimiter, the run's)
    assert main(["eval", str(run), str(multi["data"]), "--labels", str(multi["table"]), "--out",
                 str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["num_images"] == 42
    result = transferkit.export(run, "onnx", runs=2, out=str(tmp_path / "export"))
    (check,) = result.checks
    assert check.passed and check.top1_agreement == 1.0  # (the predicted sets agree)
    record = json.loads((tmp_path / "export" / "export.json").read_text())
    assert record["measure"].startswith("mAP") and record["metadata"]["task"]["thresholds"] is not None
    capsys.readouterr()
    images = [str(multi["data"] / "images" / f"{name}.png") for name in SETS]
    assert main(["predict", str(tmp_path / "export" / "model.onnx"), *images]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [set(filter(None, r["labels"].split(";"))) for r in rows] == list(SETS.values())


def test_serve_and_the_inference_protocol_answer_the_sets(multi):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.config import ServeOptions
    from transferkit.serving import create_app
    from transferkit.serving.model import ServedModel

    paths = [multi["data"] / "images" / f"{name}.png" for name in SETS]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    with TestClient(create_app(ServedModel(multi["run"], engine="auto"), ServeOptions())) as client:
        answer = client.post("/predict?top_k=3", files=files).json()["predictions"]
        assert [set(p["labels"]) for p in answer] == list(SETS.values())
        meta = client.get("/v2/models/run").json()
        assert meta["parameters"]["task"]["kind"] == "multilabel"
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [__import__("base64").b64encode(paths[1].read_bytes()).decode()]}],
                "parameters": {}}
        oip = client.post("/v2/models/run/infer", json=body)
    assert oip.status_code == 200, oip.text
    outputs = {o["name"]: o for o in oip.json()["outputs"]}
    assert set(outputs["label"]["data"][0].split(";")) == {"blue", "red"}
    assert len(outputs["probabilities"]["data"]) == 3


def test_rows_of_one_image_merge_into_its_set_unless_single_label_is_asked(multi, tmp_path, capsys):
    long = tmp_path / "long.csv"  # one row per (image, label): the long form
    rows = ["path,label"]
    for line in multi["table"].read_text().splitlines()[1:]:
        path, cell = line.split(",")
        rows += [f"{path},{label}" for label in cell.split(";") if label] or [f"{path},"]
    long.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["train", str(multi["data"]), "--labels", str(long), "--out", str(tmp_path / "r"), *FLAGS]) == 0
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert split["task"]["kind"] == "multilabel"
    assert sum(len(labels) == 2 for _, labels in split["train"] + split["val"]) == 18
    # the same rows as single-label: one line naming both rows
    capsys.readouterr()
    assert main(["train", str(multi["data"]), "--labels", str(long), "--task", "single", *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "img003.png is labelled on line" in err, err


def test_class_folders_and_a_dataframe_of_lists_train_multilabel(multi, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"file": [str(multi["data"] / p) for p, _ in _rows(multi["table"])],
                          "tags": [labels for _, labels in _rows(multi["table"])]})
    run = transferkit.train(frame, out=str(tmp_path / "df"), **TINY)
    assert run.results["task"]["kind"] == "multilabel" and run.results["metrics"]["map_macro"] > 0.9
    # one label per image, asked to be multi-label: one sigmoid per class (an image may get none)
    from helpers import make_dataset

    data = make_dataset(tmp_path / "folders", classes=("blue", "red", "green"), n_train=4, n_val=2)
    run = transferkit.train(data, out=str(tmp_path / "folders-run"), task="multilabel", **TINY)
    assert run.results["task"]["kind"] == "multilabel" and run.results["metrics"]["micro_avg"]["support"] == 6


def test_finetuning_learns_each_class_sigmoid_and_refuses_what_mixes_single_labels(multi, tmp_path, capsys):
    run = transferkit.train(multi["data"], out=str(tmp_path / "ft"), labels=str(multi["table"]), label_delim=";",
                            strategy="finetune", epochs=2, batch_size=16, **TINY)
    history = (Path(run.path) / "metrics.csv").read_text().splitlines()
    assert len(history) == 3 and run.results["metrics"]["task"] == "multilabel"
    # the kept epoch's val figure is the mAP the run reports
    assert max(float(r.split(",")[4]) for r in history[1:]) == pytest.approx(run.results["metrics"]["map_macro"],
                                                                             abs=1e-4)
    capsys.readouterr()
    assert main(["train", str(multi["data"]), "--labels", str(multi["table"]), "--label-delim", ";", "--strategy",
                 "finetune", "--mixup", "0.2", *FLAGS]) == 2
    assert "--mixup and --cutmix mix single labels" in capsys.readouterr().err


def _rows(table: Path) -> list[tuple[str, list[str]]]:
    lines = table.read_text().splitlines()[1:]
    return [(p, [x for x in cell.split(";") if x]) for p, cell in (line.split(",") for line in lines)]


def test_thresholds_are_f1_optimal_and_ap_is_scikit_learns():
    from sklearn.metrics import average_precision_score, f1_score

    from transferkit.task import average_precision, choose_thresholds

    rng = np.random.default_rng(0)
    y = rng.random((200, 4)) < [0.1, 0.3, 0.5, 0.0]
    probs = np.clip(y * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    thresholds = choose_thresholds(y, probs)
    assert thresholds[3] == 0.5  # no positive image: the default
    for c in range(3):
        best = max(f1_score(y[:, c], probs[:, c] >= t) for t in np.unique(probs[:, c]))
        assert f1_score(y[:, c], probs[:, c] >= thresholds[c]) == pytest.approx(best)
        assert average_precision(y[:, c], probs[:, c]) == pytest.approx(average_precision_score(y[:, c], probs[:, c]))


def test_the_multilabel_head_is_scikit_learns_one_vs_rest_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from transferkit.logistic import MultiLogistic

    rng = np.random.default_rng(1)
    z = rng.normal(size=(120, 6))
    y = (z[:, :3] + rng.normal(scale=0.8, size=(120, 3)) > 0).astype(np.float64)
    problem = MultiLogistic(z, y, 3, weight_decay=0.1)
    theta, _ = problem.fit(problem.start(), 500, gtol=1e-9)
    coef, intercept = problem.coefficients(theta)
    for c in range(3):
        ref = LogisticRegression(C=1 / (0.1 * len(z)), tol=1e-10, max_iter=1000).fit(z, y[:, c])
        np.testing.assert_allclose(coef[c], ref.coef_[0], atol=1e-4)
        assert intercept[c] == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_doctor_finds_a_missing_and_an_extra_label(multi, tmp_path, capsys):
    """Two images mislabelled in the table (one lacks a label it shows, one has a label it does not
    show): cleanlab's multi-label check names both, with what is missing and what is extra."""
    lines = multi["table"].read_text().splitlines()
    wrong = {"images/img003.png": "blue", "images/img008.png": "green"}  # shows blue+red; shows red
    table = tmp_path / "wrong.csv"
    table.write_text("\n".join([lines[0]] + [f"{p},{wrong.get(p, cell)}" for p, cell in
                                             (line.split(",") for line in lines[1:])]) + "\n")
    capsys.readouterr()
    # (the synthetic images are alike to ImageNet features: a higher same-scene bar leaves folds to check labels in)
    assert main(["doctor", str(multi["data"]), "--labels", str(table), "--label-delim", ";", "--out",
                 str(tmp_path / "doc"), "--near-threshold", "0.995", "--quiet"]) == 0
    report = json.loads((tmp_path / "doc" / "doctor.json").read_text())
    assert report["task"] == "multilabel" and report["balance"]["images_without_labels"] == 6
    found = {Path(x["path"]).name: x for x in report["label_issues"]}
    assert found["img003.png"]["label"] == "blue" and (found["img003.png"]["missing"] or found["img003.png"]["extra"])
    assert found["img008.png"]["extra"] == ["green"] and found["img008.png"]["missing"] == ["red"]
    assert "img003.png" in (tmp_path / "doc" / "doctor.html").read_text()


def test_studio_shows_tags_and_adds_or_removes_a_label_that_train_fixes_applies(multi, tmp_path):
    """A metadata.csv listing an image on several rows (one label each): the studio's dataset is
    multi-label (tags, counts per label, a filter by any label); a label added and one removed are
    one row per image in the fixes file, which `train --fixes` applies."""
    import shutil

    from transferkit.studio.datasets import Dataset

    data = tmp_path / "set"
    shutil.copytree(multi["data"] / "images", data / "images")
    rows = ["file_name,label"]
    for path, labels in _rows(multi["table"]):
        rows += [f"{path},{label}" for label in labels] or [f"{path},"]
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    ds = Dataset("set", data, tmp_path / "fixes" / "set.fixes.csv", tmp_path / "thumbs")
    summary = ds.summary()
    assert summary["task"] == "multilabel" and summary["images"] == 42
    assert sum(c["train"] + c["val"] for c in summary["counts"].values()) == 54  # 18 x 1 label + 18 x 2, 6 with none
    red = ds.page(cls="red")
    assert red["total"] == 18 and all("red" in i["labels"] for i in red["items"])
    item = ds.decide("images/img000.png", "add-label", "green", "shows green too")  # blue -> blue, green
    assert item["fixed_labels"] == ["blue", "green"] and item["labels"] == ["blue"]
    item = ds.decide("images/img000.png", "remove-label", "blue")  # merged: the image's one row is its new set
    assert item["fix"]["action"] == "relabel" and item["fix"]["label"] == "green"
    ds.decide("images/img003.png", "remove-label", "red")
    assert ds.summary()["counts"]["green"]["train_fixed"] + ds.summary()["counts"]["green"]["val_fixed"] == 19
    with pytest.raises(transferkit.UserError):
        ds.decide("images/img003.png", "add-label", "purple")
    run = transferkit.train(data, out=str(tmp_path / "run"), fixes=str(ds.fixes_file), **TINY)
    assert run.results["fixes"]["relabelled"] == 2
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    labels = {Path(p).name: ls for p, ls in split["train"] + split["val"]}
    classes = split["classes"]
    assert [classes[c] for c in labels["img000.png"]] == ["green"]
    assert [classes[c] for c in labels["img003.png"]] == ["blue"]


def test_the_mlflow_flavour_answers_the_sets(multi, tmp_path):
    pytest.importorskip("mlflow")
    from types import SimpleNamespace

    from transferkit.exporting.pyfunc import ImageClassifier

    transferkit.export(multi["run"], "onnx", runs=1, out=str(tmp_path / "export"))
    model = ImageClassifier()
    model.load_context(SimpleNamespace(artifacts={"onnx": str(tmp_path / "export" / "model.onnx")}))
    images = [str(multi["data"] / "images" / f"{name}.png") for name in SETS] + [str(tmp_path / "nope.png")]
    frame = model.predict(None, images)
    assert [set(x) for x in frame["labels"][:3]] == list(SETS.values())
    assert frame["error"][3] and frame["labels"][3] == []
    assert sum(frame["probabilities"][1]) > 1.5  # blue and red: each class's own sigmoid, not a softmax


def test_the_trackers_get_the_multilabel_numbers(multi):
    from types import SimpleNamespace

    from transferkit.training.run import run_end

    outcome = SimpleNamespace(cfg=SimpleNamespace(strategy="linear"), fit=SimpleNamespace(interrupted=False))
    end = run_end(multi["run"], multi["results"], outcome)
    for key in ("map_macro", "map_micro", "subset_accuracy", "hamming_loss", "micro_f1", "ap/blue", "f1/red"):
        assert key in end.metrics, key
    assert end.metrics["map_macro"] == multi["results"]["metrics"]["map_macro"]
    assert any(p.name == "pr_curves.png" for p in end.artifacts) and "pr_curves" in end.images


def test_runs_lists_and_compares_multilabel_runs_by_map(multi, tmp_path, capsys):
    capsys.readouterr()
    assert main(["runs", str(multi["run"])]) == 0
    listed = capsys.readouterr().out
    assert "mAP" in listed.splitlines()[0] and f"{multi['results']['metrics']['map_macro']:.4f}" in listed
    assert main(["runs", "compare", str(multi["run"]), str(multi["run"])]) == 0
    compared = capsys.readouterr().out
    assert "mAP (macro)" in compared and "Hamming loss" in compared


def test_the_studio_run_view_speaks_multilabel(multi):
    from transferkit.studio.views import run_view

    view = run_view(multi["run"])
    assert view["task"] == "multilabel" and view["confusion"] is None
    assert view["map"]["map_macro"] == pytest.approx(multi["results"]["metrics"]["map_macro"])
    losses = [t["loss"] for t in view["top_losses"]]
    assert losses == sorted(losses, reverse=True)


def test_the_studio_reads_joined_label_cells_with_its_label_delim(multi, tmp_path):
    import shutil

    from transferkit.studio.routes.jobs import train_command
    from transferkit.studio.datasets import Dataset

    data = tmp_path / "joined"
    shutil.copytree(multi["data"] / "images", data / "images")
    (data / "metadata.csv").write_text(multi["table"].read_text().replace("path,labels", "file_name,label", 1))
    ds = Dataset("joined", data, tmp_path / "joined.fixes.csv", tmp_path / "thumbs", label_delim=";")
    assert ds.summary()["task"] == "multilabel" and ds.page(cls="blue")["total"] == 18
    argv, cfg = train_command(ds, {"strategy": "linear"}, tmp_path / "runs", None, set())
    assert argv[argv.index("--label-delim") + 1] == ";" and cfg.label_delim == ";"


def test_the_asymmetric_loss_ignores_easy_negatives_and_is_refused_where_it_means_nothing(multi, tmp_path, capsys):
    import torch

    from transferkit.training.losses import ASL_CLIP, MultiLabelLoss

    y = torch.tensor([[1.0, 0.0, 0.0]])
    easy = torch.logit(torch.tensor([[0.9, ASL_CLIP / 2, ASL_CLIP / 4]]))
    asl, bce = MultiLabelLoss(asymmetric=True), MultiLabelLoss()
    positive_only = -torch.log(torch.tensor(0.9))
    assert float(asl(easy, y)) == pytest.approx(float(positive_only), rel=1e-5)  # negatives under the clip: free
    hard = torch.logit(torch.tensor([[0.9, 0.8, 0.1]]))
    assert 0 < float(asl(hard, y)) < float(bce(hard, y))  # a hard negative costs, less than under BCE
    capsys.readouterr()
    assert main(["train", str(multi["data"]), "--labels", str(multi["table"]), "--label-delim", ";", "--loss", "asl",
                 *FLAGS]) == 2
    assert "--loss asl is for training networks" in capsys.readouterr().err
    from helpers import make_dataset

    data = make_dataset(tmp_path / "single", n_train=2, n_val=1)
    assert main(["train", str(data), "--loss", "asl", "--strategy", "finetune", *FLAGS]) == 2
    assert "--loss asl is for multi-label data" in capsys.readouterr().err
