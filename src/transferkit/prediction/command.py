"""What `transferkit predict` does with a predictor once its options are checked: images
predicted PREDICT_CHUNK at a time and written as they come (CSV or JSON: memory stays flat),
with their heatmaps under --explain DIR, and videos' sampled frames (a row per frame, or an
object per video with its segments). The command line (`cli`) checks the options, opens the
predictor and the output, and says what was written. No torch here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TextIO

from ..errors import ImageDecodeError, UserError
from ..files import csv_table
from . import heatmaps, video
from .outputs import PredictionWriter, has_ood, joiner_of, top_predictions

PREDICT_CHUNK = 4096  # images predicted, then written, at a time


def write_predictions(predictor, files: list[str], top_k: int, stream: TextIO, kind: str, bar,
                      warn: Callable[[str], None], explain: Path | None = None, inputs: list[str] = ()) -> None:
    """`files`' predictions as `kind` ("csv" | "json") into `stream`, PREDICT_CHUNK at a time; a
    file that cannot be used is a warning. `explain`: each image's heatmap and overlay are
    written under it too (`inputs`: the images and folders given, which name them)."""
    writer = PredictionWriter(stream, kind, top_k, joiner_of(predictor), has_ood(predictor))
    for start in range(0, len(files), PREDICT_CHUNK):
        chunk = files[start:start + PREDICT_CHUNK]
        if explain is not None:
            preds = explained(predictor, chunk, top_k, list(inputs), explain, bar, warn)
        else:
            preds = predictor.predict(chunk, top_k, progress=lambda n, desc: _Part(bar))
        for p in preds:
            if p.error:
                warn(f"warning: {p.path}: {p.error}")
        writer.write(preds)
    writer.close()


def explained(predictor, files: list[str], top_k: int, inputs: list[str], out: Path, bar,
              warn: Callable[[str], None]) -> list:
    """Predict `files` and write each one's heatmap and overlay under `out` (`heatmaps.write`),
    from the same pass where the model averages no views (one pass for both), else from a second."""
    logits, ood, maps, errors = predictor.explain(files, progress=lambda n, desc: _Part(bar))
    if predictor.tta == "none":
        preds = top_predictions(files, predictor.task.probabilities(logits), errors, predictor.classes, top_k,
                                predictor.task, ood, predictor.threshold, predictor.unknown_label)
    else:
        preds = predictor.predict(files, top_k)
    written: dict[Path, str] = {}
    for path, cam in zip(files, maps):
        if cam is None:
            continue
        target = out / heatmap_name(path, inputs)
        if target in written:
            warn(f"warning: {path}: its heatmap would replace {written[target]}'s (the same name under {out}); "
                 "not written")
            continue
        written[target] = path
        try:
            image, heat = heatmaps.of_image(path, cam, predictor.sizes())
        except ImageDecodeError as exc:
            warn(f"warning: {path}: {exc.reason}")
            continue
        heatmaps.write(target, image, heat)
    return preds


def heatmap_name(path: str, inputs: list[str]) -> Path:
    """Where an image's heatmap goes under --explain DIR: its path relative to the folder given
    (a file given: its name); with several inputs, under the name of the one it came from."""
    p = Path(path).expanduser().absolute()
    for item in inputs:
        root = Path(item).expanduser().absolute()
        if root.is_dir() and root in p.parents:
            rel = p.relative_to(root)
            return rel if len(inputs) == 1 else Path(root.name or "root") / rel
        if root == p:
            return Path(p.name)
    return Path(p.name)


def write_videos(predictor, videos: list[str], every: float, duration: float | None, top_k: int, stream: TextIO,
                 as_json: bool, say: Callable[[str], None]) -> int:
    """Each video's frames, sampled every `every` seconds (for `duration` seconds: a stream),
    predicted and written as they come: a row per frame (CSV), or an object per video with its
    frames and segments (JSON); each video's segments said. A video that cannot be read is a
    warning. Returns how many could not be read."""
    results, failed = [], 0
    if not as_json:
        stream.write(csv_table(video.csv_header(top_k), []))
    for source in videos:
        try:
            found = video.predict_video(predictor, source, every, duration)
        except UserError as exc:
            say(f"warning: {exc}")
            failed += 1
            continue
        if found.warning:
            say(f"warning: {found.warning}")
        layout = (predictor.classes, predictor.task, every, top_k)
        segments = found.segments(predictor.classes, predictor.task, every)
        say(f"{source}: {len(found.times)} frames; " + (", ".join(
            f"{s['start']:.1f}-{s['end']:.1f} s {s['label'] or '(none)'} ({s['probability']:.2f})" for s in segments)
            or "no frame predicted"))
        if as_json:
            results.append(video.to_json(found, *layout))
        else:
            stream.write(csv_table(None, video.csv_rows(found, *layout)))
    if as_json:
        stream.write(json.dumps(results, indent=2, ensure_ascii=False) + "\n" if results else "[]\n")
    return failed


class _Part:
    """One chunk's view of the whole command's progress bar."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        pass
