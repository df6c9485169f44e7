"""train --track mlflow|tensorboard: read back with MLflow's own client and TensorBoard's event
reader; a tracker that fails warns once and never fails the run; nothing imported when off."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest

import transferkit
from transferkit import tracking
from transferkit.config import TrainConfig
from transferkit.training.options import resolve
from transferkit.errors import UserError

from helpers import interrupted_after_first_epoch, make_dataset

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (make test installs it)")
pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (make test installs it)")

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)
NET = dict(TINY, batch_size=4)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A fine-tuning run of 3 epochs and a linear run, both tracked by MLflow and TensorBoard,
    into one folder of runs (the default local MLflow store beside them)."""
    root = tmp_path_factory.mktemp("track")
    data = make_dataset(root / "data", n_train=4, n_val=2)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    try:
        fine = transferkit.train(data, strategy="finetune", epochs=3, out=str(root / "runs" / "fine"),
                                 track=["mlflow", "tensorboard"], **NET)
        linear = transferkit.train(data, out=str(root / "runs" / "linear"), track="mlflow,tensorboard", **TINY)
    finally:
        mp.undo()
    return root, fine, linear


def _mlflow_run(run):
    from mlflow.tracking import MlflowClient

    state = tracking.read_state(run.path)["mlflow"]
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def test_mlflow_run_has_params_epochs_final_metrics_tags_and_artifacts(tracked):
    root, fine, _ = tracked
    client, run = _mlflow_run(fine)
    assert client.tracking_uri == f"sqlite:///{(root / 'runs').resolve() / 'mlflow.db'}"  # beside the runs
    assert run.info.status == "FINISHED" and run.info.run_name == "fine"
    params = run.data.params
    assert params["strategy"] == "finetune" and params["epochs"] == "3" and params["model"] == "squeezenet1_1"
    assert params["lr"] == str(resolve(TrainConfig(data="d", strategy="finetune")).lr)  # resolved, not given
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    rows = {int(r.split(",")[0]): r.split(",") for r in (fine.path / "metrics.csv").read_text().splitlines()[1:]}
    for m in history:
        assert m.value == pytest.approx(float(rows[m.step][4]), abs=1e-6)  # val_acc column of metrics.csv
    for key in ("train_loss", "lr", "images_per_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3
    metrics = run.data.metrics
    assert metrics["accuracy"] == pytest.approx(fine.val_acc)
    assert metrics["balanced_accuracy"] == pytest.approx(fine.results["balanced_accuracy"])
    assert {"f1/blue", "f1/red", "macro_f1"} <= set(metrics)
    tags = run.data.tags
    assert tags["backbone"] == "squeezenet1_1" and tags["strategy"] == "finetune"
    assert tags["transferkit.version"] == transferkit.__version__
    assert tags["data_fingerprint"] == fine.results["data"]["fingerprint"] and len(tags["data_fingerprint"]) == 16
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "model.safetensors", "model.json", "config.yaml", "results.json"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "model.json", str(root / "dl"))
    assert open(local).read() == (fine.path / "model.json").read_text()


def test_linear_head_history_is_logged_by_iteration(tracked):
    _, _, linear = tracked
    client, run = _mlflow_run(linear)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [s.epoch for s in transferkit.evaluation.metrics.read_history_csv(linear.path / "metrics.csv")[0]]
    assert steps and steps[-1] == linear.results["head_iterations"]
    assert run.data.tags["data_fingerprint"] == _mlflow_run(tracked[1])[1].data.tags["data_fingerprint"]


def test_tensorboard_scalars_images_and_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, fine, _ = tracked
    events = EventAccumulator(str(fine.path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx(
        [h.val_acc for h in transferkit.evaluation.metrics.read_history_csv(fine.path / "metrics.csv")[0]])
    assert {"train/loss", "lr", "images_per_s"} <= set(tags["scalars"])
    assert {"confusion_matrix", "top_losses"} <= set(tags["images"])
    image = events.Images("confusion_matrix")[0]
    assert image.width > 100 and image.height > 100
    hparams = EventAccumulator(str(fine.path / "tensorboard")).Reload().SummaryMetadata("_hparams_/session_start_info")
    assert b"finetune" in hparams.plugin_data.content  # the options, in the HParams plugin's session record
    assert events.Scalars("hparam/accuracy")[0].value == pytest.approx(fine.val_acc)


def test_interrupted_run_resumes_into_the_same_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = make_dataset(tmp_path / "data", n_train=3, n_val=2)
    with interrupted_after_first_epoch():
        cut = transferkit.train(data, strategy="finetune", epochs=3, out=str(tmp_path / "runs" / "r"),
                                track="mlflow", **NET)
    client, run = _mlflow_run(cut)
    assert cut.results["interrupted"] and run.info.status == "KILLED"
    resumed = transferkit.train(resume=str(cut.path), quiet=True)  # its config.yaml says --track mlflow
    client, again = _mlflow_run(resumed)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == [1, 2, 3]
    assert again.data.metrics["accuracy"] == pytest.approx(resumed.val_acc)


def test_tracker_that_fails_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """A tracking server that is down: one warning, the run finishes and is not held up."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(tracking, "START_LIMIT_S", 2.0)
    data = make_dataset(tmp_path / "data", n_train=3, n_val=2)
    start = time.perf_counter()
    run = transferkit.train(data, out=str(tmp_path / "r"), track="mlflow", console=transferkit.console.Console(),
                            **TINY)
    assert time.perf_counter() - start < run.results["wall_s"] + 2.0 + 1.0
    err = capsys.readouterr().err
    assert err.count("--track mlflow") == 1 and "the run is not logged to mlflow" in err, err
    assert run.val_acc >= 0 and (run.path / "model.safetensors").is_file()


def test_a_tracker_error_midway_is_one_warning(tmp_path, monkeypatch, capsys):
    from transferkit.tracking.trackers import tensorboard_tracking

    def broken(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard_tracking.TensorBoardTracker, "epochs", broken)
    data = make_dataset(tmp_path / "data", n_train=3, n_val=2)
    run = transferkit.train(data, strategy="finetune", epochs=2, out=str(tmp_path / "r"), track="tensorboard",
                            console=transferkit.console.Console(), **NET)
    err = capsys.readouterr().err
    assert err.count("warning: --track tensorboard: [Errno 28] No space left on device") == 1, err
    assert run.results["epochs_run"] == 2


def test_track_option_checked_before_anything_runs(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    with pytest.raises(UserError, match="--track must be one of mlflow, tensorboard"):
        transferkit.train(data, out=str(tmp_path / "r"), track="wandb", **TINY)
    assert not (tmp_path / "r").exists()
    cfg = TrainConfig.from_mapping({"data": "d", "track": ["mlflow", "tensorboard,mlflow"]})
    assert cfg.track == "mlflow,tensorboard"
    from transferkit.tracking.registry import TRACKERS

    missing = dataclasses.replace(TRACKERS.get("mlflow"), module="mlflow_not_installed_here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TRACKERS._entries, "mlflow", missing)
        with pytest.raises(UserError, match=r"--track mlflow needs mlflow_not_installed_here, which is not installed: "
                                            r"pip install 'transferkit\[mlflow\]'"):
            transferkit.train(data, out=str(tmp_path / "r"), track="mlflow", **TINY)
    assert not (tmp_path / "r").exists()


def test_no_tracker_library_is_imported_when_tracking_is_off(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    code = ("import sys, transferkit; transferkit.train(sys.argv[1], out=sys.argv[2], model='squeezenet1_1', "
            "weights='none', image_size=64, quiet=True); "
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "r")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_export_mlflow_logs_the_model_to_the_tracked_run(tracked, monkeypatch):
    import mlflow.pyfunc

    _, _, linear = tracked
    result = transferkit.export(linear.path, "mlflow", runs=1, console=transferkit.console.Console(True))
    (check,) = [c for c in result.checks if c.format == "mlflow"]
    client, run = _mlflow_run(linear)
    assert f"runs:/{run.info.run_id}/mlflow_model" in check.note
    assert {a.path for a in client.list_artifacts(run.info.run_id, "mlflow_model")} >= {"mlflow_model/MLmodel"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/mlflow_model")
    images = [s[0] for s in json.loads((linear.path / "split.json").read_text())["val"]]
    expected = transferkit.load(linear.path, precision="fp32").predict(images)
    answer = model.predict(images)
    assert answer["label"].tolist() == [p.label for p in expected]
    # the out-of-distribution score, computed in the exported graph: the run's
    np.testing.assert_allclose(answer["ood_score"].astype(float), [p.ood_score for p in expected], atol=1e-4)
    assert answer["unknown"].tolist() == [p.unknown for p in expected]
