"""Checking an exported artifact against the PyTorch model on the run's validation images,
prepared by the torch-free code that `transferkit predict model.onnx` uses: top-1 agreement and
max |logit difference| with the PyTorch fp32 model, accuracy overall and per class, the accuracy
drop (gated by --max-drop), size, batch-1 latency (p50, p90) and batch-32 throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.decode import normalized_array
from ..errors import ImageDecodeError, UserError


@dataclass
class Check:
    """One artifact measured against the PyTorch fp32 model on the validation images."""

    format: str
    file: str
    size_mb: float
    # (None: an artifact this machine cannot run, checked by its structure: `checked`)
    top1_agreement: float | None
    max_abs_logit_diff: float | None
    accuracy: float | None
    accuracy_drop_pt: float | None  # PyTorch fp32 accuracy minus this artifact's, in points
    per_class_accuracy: dict[str, float]
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    throughput_b32: float | None  # images/s at batch 32
    passed: bool = True
    note: str = ""
    # "measured" (run on the validation images) | "structure" (not runnable here) | "not built" (its
    # converter failed: `note` says where)
    checked: str = "measured"
    # a model with an out-of-distribution score, an artifact that computes it (ONNX): the largest
    # difference from the run's scores, and the share of images whose unknown decision (at the
    # run's --reject auto threshold) agrees
    ood_max_diff: float | None = None
    unknown_agreement: float | None = None


@dataclass
class ExportResult:
    out: Path
    reference: dict  # the PyTorch fp32 model's accuracy and speed
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "reference": self.reference, "artifacts": [asdict(c) for c in self.checks]}


def decode_images(paths: list[str], meta: dict, folder: Path, name: str,
            warn: Callable[[str], None]) -> tuple[np.ndarray, list[int]]:
    """The eval views of `paths`, decoded once into a memory-mapped float32 file in `folder` (so
    a large validation set is never held in memory), with the indices that could be read."""
    p = meta["preprocess"]
    size = p["input_size"]
    x = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                  shape=(max(1, len(paths)), 3, size, size))
    ok = []
    for i, path in enumerate(paths):
        try:
            x[len(ok)] = normalized_array(path, p["resize_size"], size, p["interpolation"], p["mean"], p["std"])
            ok.append(i)
        except (ImageDecodeError, OSError) as exc:
            warn(f"skipped {path}: {getattr(exc, 'reason', exc)}")
    if not ok:
        raise UserError(f"none of the run's {name} images could be read")
    return x[:len(ok)], ok


def batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def speed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int) -> dict:
    """Batch-1 latency (p50, p90 over `runs` calls) and batch-32 throughput (median of a few)."""
    one = np.ascontiguousarray(x[:1])
    for _ in range(3):
        fn(one)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(one)
        times.append(time.perf_counter() - t)
    b32 = np.ascontiguousarray(x[np.arange(32) % len(x)])
    fn(b32)
    batch_times = []
    for _ in range(max(2, runs // 10)):
        t = time.perf_counter()
        fn(b32)
        batch_times.append(time.perf_counter() - t)
    return {"latency_ms_p50": float(np.percentile(times, 50) * 1e3), "latency_ms_p90": float(np.percentile(times, 90) * 1e3),
            "throughput_b32": float(32 / np.median(batch_times))}


def accuracy(logits: np.ndarray, y: np.ndarray, classes: list[str], task=None) -> tuple[float, dict[str, float]]:
    """Accuracy and per-class accuracy (= recall), by scikit-learn; a multi-label `task`: the
    mAP (macro, over the classes with a positive image) and each class's average precision."""
    from sklearn.metrics import accuracy_score, average_precision_score, recall_score

    if task is not None and task.multi:
        probs = task.probabilities(logits)
        ap = {c: float(average_precision_score(y[:, k] > 0, probs[:, k])) for k, c in enumerate(classes)
              if y[:, k].any()}
        return (float(np.mean(list(ap.values()))) if ap else 0.0), ap
    pred = logits.argmax(1)
    recall = recall_score(y, pred, labels=list(range(len(classes))), average=None, zero_division=0)
    return float(accuracy_score(y, pred)), {c: float(r) for c, r in zip(classes, recall)}


def measure(name: str, path: Path, runner, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
            ref: dict, classes: list[str], runs: int, task=None) -> Check:
    """One artifact against the PyTorch fp32 logits `reference` on the same inputs (multi-label:
    mAP, and the images whose predicted sets agree)."""
    logits = batched(runner, x)
    acc, per_class = accuracy(logits, y, classes, task)
    size = _size(path)
    if task is not None and task.multi:
        agree = float((task.decide(task.probabilities(logits)) == task.decide(task.probabilities(reference))).all(1).mean())
    else:
        agree = float((logits.argmax(1) == reference.argmax(1)).mean())
    return Check(name, path.name, size / 1e6, agree,
                 float(np.abs(logits - reference).max()), acc, (ref["accuracy"] - acc) * 100, per_class,
                 **speed(runner, x, runs))


def by_structure(name: str, path: Path, note: str) -> Check:
    """An artifact this machine cannot run, checked by its structure (`note`: what was checked)."""
    return Check(name, path.name, _size(path) / 1e6, None, None, None, None, {}, None, None, None, note=note,
                 checked="structure")


def not_built(name: str, path: Path, why: str) -> Check:
    """A format its converter could not build (`why` names the layer or step), or whose source
    format was not built: failed, nothing written under its name."""
    return Check(name, path.name, 0.0, None, None, None, None, {}, None, None, None, passed=False, note=why,
                 checked="not built")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def mark_failed(check: Check, path: Path, max_drop: float) -> None:
    """Keep the artifact, under a name nobody deploys by mistake."""
    failed = failing_name(path)
    path.rename(failed)
    check.passed, check.file = False, failed.name
    check.note = (check.note + "; " if check.note else "") + (
        f"accuracy drop {check.accuracy_drop_pt:.2f} pt > --max-drop {max_drop}")


def failing_name(path: Path) -> Path:
    """model.int8.onnx -> model.int8.FAILED.onnx"""
    return path.with_name(f"{path.stem}.FAILED{path.suffix}")


def format_table(result: ExportResult) -> str:
    ref = result.reference
    multi = ref.get("measure") == "mAP"  # (multi-label: mAP, and the predicted sets agreeing)
    lines = [f"{'artifact':<28} {'MB':>6} {'sets agree' if multi else 'top-1 agree':>11} {'max |dlogit|':>12} "
             f"{'mAP' if multi else 'accuracy':>8} {'drop pt':>7} "
             f"{'b1 p50 ms':>9} {'b1 p90 ms':>9} {'b32 img/s':>9}",
             f"{'pytorch fp32 eager':<28} {'':>6} {'':>11} {'':>12} {ref['accuracy']:8.4f} {'':>7} "
             f"{ref['latency_ms_p50']:9.1f} {ref['latency_ms_p90']:9.1f} {ref['throughput_b32']:9.1f}"]
    for c in result.checks:
        if c.checked != "measured":
            lines.append(f"{c.file:<28} {c.size_mb:6.1f}  " + ("NOT BUILT: " if c.checked == "not built" else "")
                         + c.note)
            continue
        lines.append(f"{c.file:<28} {c.size_mb:6.1f} {c.top1_agreement:11.4f} {c.max_abs_logit_diff:12.2e} "
                     f"{c.accuracy:8.4f} {c.accuracy_drop_pt:7.2f} {c.latency_ms_p50:9.1f} {c.latency_ms_p90:9.1f} "
                     f"{c.throughput_b32:9.1f}" + ("" if c.passed else "  FAILED: " + c.note))
    for c in result.checks:
        if c.ood_max_diff is not None:
            agree = "" if c.unknown_agreement is None else f", unknown decisions agree on {c.unknown_agreement:.2%}"
            lines.append(f"{c.file}: out-of-distribution scores within {c.ood_max_diff:.2e} of the run's{agree}")
    lines.append(f"export.json: {result.out / 'export.json'}")
    return "\n".join(lines)
