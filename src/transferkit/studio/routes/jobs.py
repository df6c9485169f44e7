"""The studio's training and queue routes: /api/train (the page's form as the `transferkit train`
command it stands for, checked as the CLI checks it, then queued) and /api/jobs."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Body, Depends, HTTPException

from ...config import TrainConfig
from ...errors import UserError
from ...training.options import resolve, validate
from ..datasets import Dataset
from ..jobs import fresh_run
from ..state import FieldError, Studio, current_studio, offered_models

FORM_LABELS = {"epochs": "Epochs", "batch_size": "Batch size", "lr": "Learning rate", "weight_decay": "Weight decay",
               "augment": "Augment", "mixup": "MixUp", "cutmix": "CutMix", "ema": "EMA decay",
               "class_weights": "Class weights", "balanced_sampler": "Balanced sampler", "seed": "Seed",
               "budget": "Budget", "image_size": "Image size", "unfreeze": "Unfrozen stages", "patience": "Patience",
               "track": "Tracking", "strategy": "Strategy", "model": "Backbone"}
FORM_OPTIONS = tuple(k for k in FORM_LABELS if k not in ("strategy", "model"))


router = APIRouter()


@router.post("/api/train")
def train(body: dict = Body(...), studio: Studio = Depends(current_studio)):
    ds = studio.dataset(str(body.get("dataset", "")))
    taken = {(j.result or {}).get("run") for j in studio.jobs.jobs}
    argv, cfg = train_command(ds, body, studio.runs, studio.options.cache_dir, taken)
    ds.load()
    job = studio.jobs.submit("train", argv, f"train {ds.name} ({cfg.strategy}, {cfg.model})",
                             epochs=_epochs(cfg), train_images=ds.summary_counts("train"))
    job.result = {"run": Path(argv[argv.index("--out") + 1]).name}
    return job.to_dict()


@router.get("/api/jobs")
def jobs(studio: Studio = Depends(current_studio)):
    return [j.to_dict() for j in studio.jobs.jobs]


def known_job(job_id: int, studio: Studio = Depends(current_studio)):
    """The job `job_id` (a 404 for one the queue does not know)."""
    found = studio.jobs.get(job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return found


@router.get("/api/jobs/{job_id}")
def job(found=Depends(known_job)):
    return found.to_dict()


@router.post("/api/jobs/{job_id}/stop")
def stop(found=Depends(known_job), studio: Studio = Depends(current_studio)):
    studio.jobs.stop(found)
    return found.to_dict()


def train_command(ds: Dataset, body: dict, runs: Path, cache_dir: str | None,
                  taken: set | None = None) -> tuple[list[str], TrainConfig]:
    """The `transferkit train` command the page's form stands for (checked as the CLI checks it);
    its run folder a new one in `runs` (not one of the `taken` names either)."""
    values = {"data": str(ds.root), "label_delim": ds.label_delim, "strategy": body.get("strategy") or "linear",
              "model": body.get("model") or "efficientnet_lite0"}
    given = body.get("options") or {}
    if not isinstance(given, dict):
        raise UserError("options must be an object of option: value")
    unknown = sorted(set(given) - set(FORM_OPTIONS))
    if unknown:
        raise UserError(f"the page does not set {', '.join(unknown)}; use the CLI")
    # (0 is a value, not "unset": `v in (None, "", False)` took epochs 0 for an empty field)
    values.update({k: form_value(k, v) for k, v in given.items() if not (v is None or v is False or v == "")})
    values["out"] = str(fresh_run(runs, f"{time.strftime('%Y%m%d-%H%M%S')}-{ds.id}-{values['strategy']}", taken))
    if ds.fixes_file.is_file() and ds.fixes():
        values["fixes"] = str(ds.fixes_file)
    try:
        cfg = TrainConfig.from_mapping(values)
        validate(cfg)
    except FieldError:
        raise
    except UserError as exc:  # said with the CLI's flags: in the page's words, on the field it is about
        raise _in_page_words(str(exc)) from None
    if cfg.model not in offered_models():
        raise FieldError("model", f"Backbone {cfg.model} has no ImageNet weights on this machine; choose one the list "
                                  "offers, or train it with the CLI's --weights PATH")
    argv = ["train", str(ds.root), "--out", values["out"], "--strategy", cfg.strategy, "--model", cfg.model]
    if cfg.fixes:
        argv += ["--fixes", cfg.fixes]
    if ds.label_delim:
        argv += ["--label-delim", ds.label_delim]
    defaults = TrainConfig()
    for key in FORM_OPTIONS:
        value = getattr(cfg, key)
        if value in (None, False) or value == getattr(defaults, key) and key != "seed":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif key == "track":
            for tracker in str(value).split(","):
                argv += [flag, tracker]
        else:
            argv += [flag, str(value)]
    if cache_dir:
        argv += ["--cache-dir", cache_dir]
    return argv, cfg


def form_value(key: str, value):
    """A value of the page's form as the option takes it: text typed into a number field is
    read as a number here, and what is not one is refused on its field (never dropped)."""
    from dataclasses import fields

    from ...config import field_type

    declared = next(field_type(f) for f in fields(TrainConfig) if f.name == key)
    if not isinstance(value, str) or declared in ("str", "bool"):
        return value
    text = value.strip()
    try:
        number = int(text) if declared == "int" else float(text)
    except ValueError:
        kind = "a whole number" if declared == "int" else "a number"
        raise FieldError(key, f"{FORM_LABELS[key]}: '{text[:40]}' is not {kind}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise FieldError(key, f"{FORM_LABELS[key]}: give a finite number")
    return number


def _in_page_words(message: str) -> UserError:
    """A TrainConfig error about a form option, with the field's label for its flag."""
    from ...config import flag

    for key, label in FORM_LABELS.items():
        for said in (flag(key), f"option '{key}'"):
            if said in message:
                return FieldError(key, message.replace(said, label, 1))
    return UserError(message)


def _epochs(cfg: TrainConfig) -> int | None:
    try:
        return resolve(cfg).epochs
    except UserError:
        return None
