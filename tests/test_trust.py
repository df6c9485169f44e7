"""Trust what the model says (issue 40): an honest "unknown" (an out-of-distribution score, its
threshold, --reject and --unknown-label in predict, serve, eval, the report, exports and the
studio), where each answer comes from (heatmaps: predict --explain, serve /explain, the report's
most confidently wrong images), and calibrating fine-tuned networks on held-out training images."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit
from helpers import make_dataset, make_image
from transferkit import ood as oods

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A default (linear) run on three colours, and an image unlike any of them."""
    root = tmp_path_factory.mktemp("trust")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=8, n_val=4)
    run = Path(transferkit.train(data, out=str(root / "run"), **TINY).path)
    odd = root / "odd"
    rng = np.random.default_rng(7)  # a checkerboard of saturated colours: nothing like a flat noisy colour
    board = (np.indices((48, 64)).sum(0) // 4 % 2)[..., None] * np.array([255, 0, 255]) + rng.integers(0, 60, (48, 64, 3))
    odd.mkdir()
    Image.fromarray(np.clip(board, 0, 255).astype(np.uint8)).save(odd / "board.png")
    return data, run, odd


# -- the score -------------------------------------------------------------------------------------

def test_knn_score_is_the_kth_nearest_cosine_distance_and_auto_keeps_95_percent():
    rng = np.random.default_rng(0)
    train, x = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    ood = oods.Ood.fit(train)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    sims = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ unit.T
    want = 1 - np.sort(sims, 1)[:, -ood.k]
    np.testing.assert_allclose(ood.scores(x), want, atol=1e-5)
    val = rng.normal(size=(200, 8))
    kept = ood.with_threshold(ood.scores(val))
    assert np.mean(ood.scores(val) <= kept.threshold) == pytest.approx(oods.KEEP, abs=0.01)
    # a NaN row (an unusable image) stays NaN; a training image itself scores near 0 at k = 1
    assert np.isnan(ood.scores(np.full((1, 8), np.nan)))[0]
    assert oods.knn_scores(unit, train[:3], 1)[0] == pytest.approx(0, abs=1e-5)


def test_the_record_is_checked_and_reject_values_are_parsed():
    ood = oods.Ood.fit(np.eye(4)).with_threshold(np.array([0.2, 0.4]))
    again = oods.Ood.from_dict(ood.to_dict(), ood.reference)
    assert again.k == ood.k and again.threshold == pytest.approx(ood.threshold)
    for bad in ({**ood.to_dict(), "k": 99}, {**ood.to_dict(), "threshold": 7}, {**ood.to_dict(), "method": "x"},
                {**ood.to_dict(), "width": 3}):
        with pytest.raises(ValueError):
            oods.Ood.from_dict(bad, ood.reference)
    assert oods.parse_reject("auto") == "auto" and oods.parse_reject("off") == "off"
    assert oods.parse_reject("0.5") == 0.5
    for bad in ("high", "3", "-0.1", "nan"):
        with pytest.raises(ValueError):
            oods.parse_reject(bad)


def test_auroc_and_fpr_by_hand():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    known, unknown = rng.normal(size=40), rng.normal(1, size=30)
    want = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[known, unknown])
    assert oods.auroc(known, unknown) == pytest.approx(want)
    assert oods.fpr_at_tpr(np.arange(100.0), np.array([0.0, 200.0])) == 0.5  # the one below the known's 95th percentile


# -- predict, eval, the report, the export -----------------------------------------------------

def test_predict_writes_ood_score_and_unknown_and_rejects_as_asked(trained, tmp_path):
    data, run, odd = trained
    rows = list(csv.DictReader(io.StringIO(cli("predict", run, data / "val", odd).stdout)))
    assert {"ood_score", "unknown"} <= set(rows[0])
    board = next(r for r in rows if r["path"].endswith("board.png"))
    known = [float(r["ood_score"]) for r in rows if "board" not in r["path"]]
    assert float(board["ood_score"]) > max(known)  # the image unlike the training images scores highest
    assert board["unknown"] == "true"
    everything = list(csv.DictReader(io.StringIO(cli("predict", run, odd, "--reject", "0",
                                                     "--unknown-label", "other").stdout)))
    assert everything[0]["label"] == "other" and everything[0]["top1_label"] in ("blue", "red", "green")
    nothing = list(csv.DictReader(io.StringIO(cli("predict", run, odd, "--reject", "off").stdout)))
    assert nothing[0]["unknown"] == "false" and nothing[0]["label"] != "other"
    bad = cli("predict", run, odd, "--reject", "5", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "[0, 2]" in bad.stderr
    out = json.loads(cli("predict", run, odd, "--output", tmp_path / "p.json").stdout and (tmp_path / "p.json").read_text())
    assert out[0]["unknown"] is True and out[0]["ood_score"] > 0


def test_eval_and_the_report_show_scores_and_selective_prediction(trained, tmp_path):
    data, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ood"]["threshold"] is not None
    assert [r["coverage"] for r in metrics["selective"]] == [1.0, 0.95, 0.9, 0.8]
    assert metrics["selective"][0]["accuracy_by_confidence"] == pytest.approx(metrics["accuracy"])
    assert "ood_score" in (run / "predictions.csv").read_text().splitlines()[0]
    assert "Selective prediction" in (run / "report.html").read_text()
    summary = transferkit.evaluate(run, data, out=tmp_path / "eval")
    assert summary["ood"]["threshold"] == pytest.approx(metrics["ood"]["threshold"])


def test_the_export_computes_the_runs_scores_in_its_graph(trained, tmp_path):
    from transferkit.prediction.onnx_predictor import OnnxPredictor

    data, run, odd = trained
    transferkit.export(run, "onnx", runs=1, out=str(tmp_path / "export"))
    images = [str(p) for p in sorted((data / "val").rglob("*.jpg"))] + [str(odd / "board.png")]
    with transferkit.load(run, engine="torch", precision="fp32") as model:
        _, want, _ = model.scored(images)
    onnx = OnnxPredictor(tmp_path / "export" / "model.onnx")
    _, got, _ = onnx.scored(images)
    np.testing.assert_allclose(got, want, atol=1e-4)
    checked = json.loads((tmp_path / "export" / "export.json").read_text())["artifacts"][0]
    assert checked["ood_max_diff"] < 1e-4 and checked["unknown_agreement"] == 1.0
    assert onnx.predict(images[-1:])[0].unknown is True


def test_a_run_made_before_the_score_predicts_without_it_and_says_so_when_asked(trained, tmp_path):
    import shutil

    data, run, odd = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    meta = json.loads((old / "model.json").read_text())
    meta.pop("ood")
    (old / "model.json").write_text(json.dumps(meta))
    header = cli("predict", old, odd).stdout.splitlines()[0]
    assert "ood_score" not in header
    refused = cli("predict", old, odd, "--reject", "0.5", check=False)
    assert refused.returncode != 0 and "no out-of-distribution score" in refused.stderr and "Traceback" not in refused.stderr


# -- heatmaps ----------------------------------------------------------------------------------

def test_class_maps_are_exact_for_a_linear_head_and_grad_cam_agrees(trained):
    import torch

    from transferkit.models.maps import grad_cam

    data, run, _ = trained
    image = str(next((data / "val" / "red").iterdir()))
    with transferkit.load(run, engine="torch", precision="fp32") as model:
        logits, _, maps, _ = model.explain([image])
        top = int(logits[0].argmax())
        # the map's mean is the class's logit less its bias: the exact class activation map
        bias = model.model.head.bias.detach().numpy()[top]
        assert float(maps[0].mean()) == pytest.approx(float(logits[0, top] - bias), rel=1e-3, abs=1e-4)
        assert model._maps.exact
        x = model.runtime.to_input(torch.from_numpy(model.prepare(image)[None].copy()).permute(0, 3, 1, 2),
                                   model.extractor.mean, model.extractor.std, model.runtime.dtype)
        cam = grad_cam(model.model, model._maps, x, torch.tensor([top])).numpy()[0]
    h, w = maps[0].shape
    np.testing.assert_allclose(cam, np.maximum(maps[0], 0) / (h * w), rtol=1e-3, atol=1e-6)


def test_predict_explain_writes_a_heatmap_of_each_images_own_size(trained, tmp_path):
    data, run, _ = trained
    images = tmp_path / "images"
    make_image(images / "sub" / "wide.jpg", (200, 40, 30), size=(96, 40))
    rotated = Image.open(make_image(images / "turned.jpg", (30, 60, 200), size=(80, 50)))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotated 90 degrees, so decoded it is 50 x 80
    rotated.save(images / "turned.jpg", exif=exif)
    out = tmp_path / "explained"
    cli("predict", run, images, "--explain", out)
    wide = Image.open(out / "sub" / "wide.jpg.cam.png")
    assert wide.mode == "L" and wide.size == (96, 40)
    assert Image.open(out / "turned.jpg.cam.png").size == (50, 80)
    assert Image.open(out / "sub" / "wide.jpg.cam.jpg").format == "JPEG"
    assert np.asarray(wide).max() == 255  # scaled to its maximum
    one = tmp_path / "one"
    cli("predict", run, images / "sub" / "wide.jpg", "--explain", one)
    assert (one / "wide.jpg.cam.png").is_file()
    inside = cli("predict", run, images, "--explain", images / "heat", check=False)
    assert inside.returncode != 0 and "never writes into your data" in inside.stderr
    assert not (images / "heat").exists()
    exported = cli("predict", tmp_path / "m.onnx", images, "--explain", out, check=False)
    assert exported.returncode != 0 and "Traceback" not in exported.stderr


def test_the_report_shows_heatmaps_of_the_most_confidently_wrong(tmp_path):
    from transferkit.evaluation.explained import explain_wrong, heatmap_files

    data = make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=6, n_val=3)
    run = Path(transferkit.train(data, out=str(tmp_path / "run"), **TINY).path)
    # (exactly two predictions wrong, whatever the run got right: the rest made right)
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    for i, r in enumerate(rows):
        r["actual"] = ("red" if r["predicted"] == "blue" else "blue") if i < 2 else r["predicted"]
    with open(run / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with transferkit.load(run) as predictor:
        assert explain_wrong(run, predictor) == 2
    assert len(heatmap_files(run)) == 2
    transferkit.report(run)
    assert (run / "report.html").read_text().count('class="heatmap"') == 2


def test_serve_answers_scores_and_explains(trained, tmp_path):
    from fastapi.testclient import TestClient

    from transferkit.config import ServeOptions
    from transferkit.serving.app import create_app
    from transferkit.serving.model import ServedModel

    data, run, odd = trained
    board = (odd / "board.png").read_bytes()
    with TestClient(create_app(ServedModel(run), ServeOptions(unknown_label="other"))) as client:
        pred = client.post("/predict", files={"f": ("board.png", board)}).json()["predictions"][0]
        assert pred["unknown"] is True and pred["label"] == "other" and pred["ood_score"] > 0
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(board).decode()]}]}
        outputs = {o["name"]: o for o in client.post("/v2/models/run/infer", json=body).json()["outputs"]}
        assert outputs["unknown"]["data"] == [True] and outputs["ood_score"]["data"][0] == pytest.approx(pred["ood_score"])
        answer = client.post("/explain", files={"f": ("board.png", board)}).json()
        heat = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"])))
        assert heat.size == (64, 48) and heat.mode == "L" and answer["label"] == "other"
        assert client.post("/explain", files={"f": ("x.png", b"not an image")}).status_code == 400
    transferkit.export(run, "onnx", runs=1, out=str(tmp_path / "export"))
    with TestClient(create_app(ServedModel(tmp_path / "export" / "model.onnx"))) as client:
        refused = client.post("/explain", files={"f": ("board.png", board)})
        assert refused.status_code == 409 and "no spatial maps" in refused.json()["detail"]
        assert client.post("/predict", files={"f": ("board.png", board)}).json()["predictions"][0]["unknown"] is True


# -- calibrating fine-tuned networks -----------------------------------------------------------

def test_fine_tuned_networks_hold_out_training_images_only_where_there_are_enough():
    from transferkit.data.discover import DatasetSplit, Sample
    from transferkit.training.network import CALIBRATION_MIN_IMAGES, held_out

    def split(per_class: int) -> DatasetSplit:
        train = [Sample(f"{c}{i}.png", c) for c in range(3) for i in range(per_class)]
        return DatasetSplit(["a", "b", "c"], train, [], "split")

    assert held_out(split(40), 0) == []  # 12 images: too few to fit a temperature on
    held = held_out(split(300), 0)
    assert len(held) == 90 >= CALIBRATION_MIN_IMAGES
    assert sorted(np.bincount([s.label for s in held]).tolist()) == [30, 30, 30]  # stratified
    assert held == held_out(split(300), 0)  # seeded: every rank and a resumed run hold out the same


def test_class_maps_sum_the_stages_the_head_reads_and_leave_out_the_rest():
    from transferkit.prediction.heatmaps import class_maps

    rng = np.random.default_rng(3)
    last, stage = rng.normal(size=(2, 4, 2, 2)), rng.normal(size=(2, 3, 4, 4))
    weight = rng.normal(size=(5, 7))  # 5 classes on 4 + 3 columns: both stages
    both = class_maps([last, stage], weight, np.array([1, 4]))
    # each stage adds its share of the logit: the spatial mean is W . (the maps' means)
    means = np.concatenate([last.mean((2, 3)), stage.mean((2, 3))], 1)
    np.testing.assert_allclose(both.mean((1, 2)), [weight[1] @ means[0], weight[4] @ means[1]], rtol=1e-4)
    # a head on the last layer's 4 columns of the same network: the earlier stage is left out
    only = class_maps([last, stage], weight[:, :4], np.array([1, 4]))
    np.testing.assert_allclose(only.mean((1, 2)), [weight[1, :4] @ means[0, :4], weight[4, :4] @ means[1, :4]],
                               rtol=1e-4)


def test_kth_largest_without_a_sort_equals_top_k_ties_included():
    """LiteRT's interpreter has no sort: the flatbuffer finds the k-th neighbour by taking out the
    largest k - 1 times (`with_ood.kth_largest`). Its values are top-k's, exact duplicates (a tie)
    counted once each."""
    import torch

    from transferkit.models.with_ood import kth_largest

    sims = torch.rand(50, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sims[:, [5, 7, 9]] = 0.995  # three copies of one training image
    for k in (1, 2, 3, 4, 10, 40):
        assert torch.equal(kth_largest(sims, k), torch.topk(sims, k, dim=1).values[:, -1])
