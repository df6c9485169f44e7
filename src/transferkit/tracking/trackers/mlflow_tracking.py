"""MLflow: one MLflow run per transferkit run, through `MlflowClient` (no process-wide active run).

Where it logs: `MLFLOW_TRACKING_URI` where it is set (a server, a database, a folder), else a
SQLite store beside the run folders (`<runs>/mlflow.db`, MLflow's recommended local store) with
the artifacts in `<runs>/mlartifacts`: `mlflow ui --backend-store-uri sqlite:///<runs>/mlflow.db`
shows them. The experiment is `MLFLOW_EXPERIMENT_NAME`, else "transferkit"."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ...files import locked

from ..registry import TrackerKind, register

EXPERIMENT = "transferkit"
BATCH = 100  # params / metrics per log_batch call (MLflow's limit on params is 100)


def default_uri(runs: Path) -> str:
    return f"sqlite:///{runs.resolve() / 'mlflow.db'}"


class MlflowTracker:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.client = None
        self.run_id: str | None = None

    def start(self, start) -> dict:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        uri = env_uri or default_uri(self.run_dir.parent)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        previous = start.state or {}
        # Two first runs at once would both create the local store (its schema) and the experiment,
        # and one would lose: the store's making and the experiment's look-up or creation are done
        # under a lock beside it; with a store of the user's, a lost race for the experiment reads
        # the winner's.
        local = None if env_uri else self.run_dir.parent.resolve()
        with locked(local / ".mlflow.lock") if local else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=uri)
            if isinstance(previous.get("run_id"), str) and previous.get("tracking_uri") == uri:  # --resume: the same run
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                return previous
            experiment = self._experiment(name, local)
        run = self.client.create_run(experiment, run_name=start.name, tags=start.tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in start.params.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": experiment}

    def _experiment(self, name: str, local: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = (local / "mlartifacts").as_uri() if local else None
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:
            found = self.client.get_experiment_by_name(name)  # another process made it meanwhile
            if found is None:
                raise
            return found.experiment_id

    def epochs(self, rows) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(key, float(value), int(row.time * 1000), row.step)
                   for row in rows for key, value in row.values.items()]
        for i in range(0, len(metrics), BATCH * 10):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH * 10])

    def finish(self, end) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), float(v), now, 0) for k, v in end.metrics.items()]
        params = [Param(k, v) for k, v in end.params.items()]
        tags = [RunTag(k, v) for k, v in end.tags.items()]
        for i in range(0, max(len(metrics), len(params), len(tags)), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH], params=params[i:i + BATCH],
                                  tags=tags[i:i + BATCH])
        for path in end.artifacts:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, end.status)


def metric_key(name: str) -> str:
    """`name` with what MLflow refuses in a metric key (anything but letters, digits, _ - . space
    and /) replaced: a class name becomes part of per-class keys."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


register(TrackerKind(name="mlflow", summary="one MLflow run per run: options, metrics per epoch, the report and bundle",
                     module="mlflow", extra="mlflow", open=MlflowTracker))
