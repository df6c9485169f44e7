"""What a run leaves in its folder once its strategy has trained: the bundle (model.safetensors,
model.json), results.json with what it ran on and the cross-validation's warning, the evaluation
and the report (by the helper process), the conversions carried into the run."""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cache import Cache
from .. import engines
from ..errors import UserError
from ..evaluation import memo, metrics
from ..evaluation.report import read_summary, render_page
from ..worker import EVALUATE_AND_PLOT, WRITE_EVALUATION, Worker
from ..files import write_json
from .context import Outcome
from .parent import Parent
from .setup import own_rng
from .strategies.base import RECIPE_OPTIONS, STRATEGIES




def trained_task(outcome: Outcome):
    """The kept model's task: the data's, with the thresholds chosen for it (multi-label) or its
    calibrating temperature (single-label)."""
    task = outcome.split.task
    if task.multi and outcome.thresholds is not None:
        return task.with_thresholds(outcome.thresholds)
    return task.with_temperature(outcome.temperature) if outcome.temperature is not None else task


def write_outputs(run_dir: Path, outcome: Outcome, ran_on: tuple[str, str], started: float, worker: Worker,
                  health: dict | None = None, engine: engines.Choice | None = None, cache: Cache | None = None) -> dict:
    """results.json, metrics.csv, split.json, the model's conversions for ONNX Runtime (`carry`),
    and by `worker` the evaluation files and (unless --no-report) the report. `ran_on`: (device,
    precision) of the kept model's numbers; `engine`: what extracted the features, if any; `cache`:
    the run's (None: a temporary one, --no-cache)."""
    cfg, split, fit = outcome.cfg, outcome.split, outcome.fit
    y_val = split.targets(split.val)
    logits = outcome.val_logits
    logits = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits, np.float32)
    task = trained_task(outcome)

    _write_split(run_dir, outcome, task)  # (first: converting the model to explain checks it on these images)
    paths = [s.path for s in split.val]
    extra = {"skipped_files": split.skipped, "data_health": health}
    threshold = outcome.ood.threshold if outcome.ood is not None else None
    metrics.write_history_csv(run_dir / "metrics.csv", fit.history, fit.unit)  # config.yaml is already there
    # a run that would write the same evaluation and report files copies them (`evaluation.memo`)
    store = cache.reports() if cache is not None else None
    evaluation = memo.key(paths, {"y": np.asarray(y_val), "logits": logits, "ood": outcome.val_ood},
                          {"classes": split.classes, "task": task.to_dict(), "extra": extra, "threshold": threshold,
                           "best_epoch": fit.best_epoch, "unit": fit.unit,
                           "history": [(h.epoch, h.train_loss, h.train_acc, h.val_loss, h.val_acc)
                                       for h in fit.history]})
    digest = memo.with_model(evaluation, run_dir)
    kept = memo.restore(store, digest, run_dir, report=not cfg.no_report)  # (--no-report: its evaluation files)
    if kept is None and cfg.no_report:
        digest = evaluation
        kept = memo.restore(store, digest, run_dir, report=False)
    with contextlib.ExitStack() as stack:
        if kept is None:  # the evaluation (and the plots) in the worker, while this process makes the heatmaps
            evaluated = worker.submit(EVALUATE_AND_PLOT if not cfg.no_report else WRITE_EVALUATION, run_dir, paths,
                                      np.asarray(y_val), logits, split.classes, extra, task.to_dict(), outcome.val_ood,
                                      threshold, *((results_epoch(fit),) if not cfg.no_report else ()))
        if cache is None:  # (--no-cache: what converting makes goes into a temporary cache, never the user's)
            cache = Cache(stack.enter_context(tempfile.TemporaryDirectory(prefix="transferkit-"))).prepare()
        if not cfg.no_report and kept is None:  # the heatmaps of the most confidently wrong images, while the worker evaluates
            from ..evaluation.explained import report_heatmaps
            from ..evaluation.rows import as_records, prediction_rows

            with own_rng():  # (building the model to explain draws initial weights: not from the caller's stream)
                report_heatmaps(run_dir, run_dir, worker.warn, rows=as_records(*prediction_rows(
                    paths, y_val, logits, split.classes, task, outcome.val_ood)), multi=task.multi, cache=cache)
        with own_rng():
            carry(run_dir, cache, worker.warn)
    if kept is None:
        summary, note = evaluated() if not cfg.no_report else (evaluated(), None)
    else:
        summary, note = read_summary(run_dir), kept

    results = _results(outcome, task, summary, health, ran_on, engine, started)
    write_json(run_dir / "results.json", results)
    if not cfg.no_report:
        render_page(run_dir, note)  # misclassified.csv, report.html (the plots are drawn)
    if kept is None:
        memo.keep(store, digest, run_dir, None if cfg.no_report else note)
    return results


def _write_split(run_dir: Path, outcome: Outcome, task) -> None:
    """split.json: the seed and the images of each split with their labels (multi-label: lists)."""
    cfg, split = outcome.cfg, outcome.split

    def label(s):
        return list(s.labels) if task.multi else s.label

    write_json(run_dir / "split.json", {
        "val_source": split.val_source, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
        "classes": split.classes, "task": task.to_dict(),
        "train": [[s.path, label(s)] for s in split.train],
        "val": [[s.path, label(s)] for s in split.val],
    })


def _results(outcome: Outcome, task, summary: dict, health: dict | None, ran_on: tuple[str, str],
             engine: engines.Choice | None, started: float) -> dict:
    """results.json's object: the measures, what trained on what, where it ran, how long it took."""
    cfg, split, fit = outcome.cfg, outcome.split, outcome.fit
    return {
        "val_acc": summary["accuracy"],
        "cv": cross_validation(outcome),
        "balanced_accuracy": summary["balanced_accuracy"],
        "best_epoch": results_epoch(fit),
        "epochs_run": len(fit.history) if fit.unit == "epoch" else None,
        "head_iterations": fit.best_epoch if fit.unit == "iteration" else None,
        "stopped_early": fit.stopped_early,
        "interrupted": fit.interrupted,
        "stopped_by": fit.stopped_by,
        "strategy": cfg.strategy,
        "strategy_reason": outcome.info.get("strategy_reason"),
        "backbone": cfg.model,
        "features": outcome.features,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_OPTIONS if getattr(cfg, k) is not None} or None,
        "head": outcome.info.get("head"),
        "classes": split.classes,
        "task": task.to_dict(),
        "num_train": len(split.train),
        "num_val": len(split.val),
        "val_source": split.val_source,
        "data": {"path": cfg.data, "fingerprint": split.fingerprint(cfg.data)},
        "skipped_files": split.skipped,
        "excluded": split.excluded,
        "fixes": split.fixes,
        "added": split.added,
        "data_health": health,
        "device": ran_on[0],
        "precision": ran_on[1],
        "engine": engine.to_dict() if engine is not None else None,
        "distributed": outcome.info.get("distributed"),
        "metrics": summary,
        "strategy_info": outcome.info,
        "parent": parent.record(cfg.strategy) if (parent := Parent.of(cfg, split.classes, task.multi)) else None,
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(_cpu_seconds(), 3),
        "finished_at": round(time.time(), 3),  # Unix time (`transferkit runs` lists by it)
    }


def results_epoch(fit) -> int | None:
    """results.json's best_epoch (the epoch the curves mark): the kept epoch of an epoch-trained
    fit; None for the logistic head (its history counts iterations)."""
    return fit.best_epoch if fit.unit == "epoch" else None


def carry(run_dir: Path, cache: Cache, warn) -> None:
    """The run folder gets the conversions its inference needs (`engines.ort.carry_networks`), so
    that it predicts and serves where torch is not installed; one warning where it cannot."""
    import importlib.util

    from ..engines.ort import carry_networks

    if importlib.util.find_spec("onnxruntime") is None:
        return  # (nothing runs the conversions here: inference is PyTorch's)
    try:
        carry_networks(run_dir, cache)
    except UserError as exc:
        warn(f"the run folder holds no model converted for ONNX Runtime ({exc}): predicting with it needs torch")


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (the
    decoding and loader workers); under torchrun, the primary's."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# The head's cross-validated accuracy more than this above its val accuracy: a warning (the
# training images resemble each other more than the val images resemble them).
CV_OPTIMISM = 0.05


def cross_validation(outcome: Outcome) -> dict | None:
    """The head's cross-validation on the training images (kept beside the val accuracy in
    results.json): its accuracy, folds, images, and the groups of near-identical images kept in
    one fold. None where no head was cross-validated. `estimates`: whether the kept model is
    the cross-validated head (not a fine-tuned network)."""
    head = outcome.info.get("head")
    if not head or head.get("cv_accuracy") is None:
        return None
    return {"accuracy": head["cv_accuracy"], "measure": "mAP" if outcome.split.task.multi else "accuracy",
            "folds": head["folds"], "images": head.get("cv_images"),
            "groups": head.get("cv_groups"), "grouped_images": head.get("cv_grouped_images", 0),
            "estimates": "the kept model" if STRATEGIES.get(outcome.cfg.strategy).trains == "head" or
            outcome.info.get("kept") == "probe" else "the head on frozen features"}


def cv_warning(results: dict) -> str | None:
    """A line when the head's cross-validated accuracy exceeds the val accuracy by more than
    CV_OPTIMISM (and the val split is big enough to say so)."""
    cv = results.get("cv")
    if not cv or cv["estimates"] != "the kept model" or results["num_val"] < 20:
        return None
    # (multi-label: the cross-validation measures mAP, so the val mAP is its counterpart)
    summary = results.get("metrics") or {}
    val = summary.get("map_macro") if summary.get("task") == "multilabel" else results["val_acc"]
    if val is None:
        return None
    gap = cv["accuracy"] - val
    if gap <= CV_OPTIMISM:
        return None
    return (f"the head cross-validates at {cv['accuracy']:.1%} on the training images but scores {val:.1%} "
            f"on val ({gap * 100:.1f} points lower): the val images differ from the training images more than these "
            f"differ from each other ({cv['groups']} groups of near-identical shots were kept apart in the folds); "
            "trust the val figure, and check the split (`transferkit doctor`)")
