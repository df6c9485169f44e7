"""Predictions on videos and streams (`transferkit predict RUN clip.mp4 --every 1`): frames decoded
by PyAV (FFmpeg's decoders; the `video` extra), one sampled every `every` seconds of the video's
own clock, predicted in batches by any predictor; then each frame's probabilities smoothed over
`SMOOTH_SECONDS` and the video cut into segments of one label. No torch here.

A stream (rtsp://, http(s)://, ...) is read as it comes, for `duration` seconds of its clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MissingExtra, UserError
from ..task import Task

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                            ".3gp", ".ogv", ".mts", ".m2ts"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
SMOOTH_SECONDS = 2.0  # about the window each frame's probabilities are averaged over, centred on it
OPEN_TIMEOUT = 20.0  # seconds a stream may take to open or to send its next packet
BATCH = 32  # sampled frames predicted at a time


def is_stream(item: str) -> bool:
    return str(item).lower().startswith(STREAM_SCHEMES)


def is_video(item: str) -> bool:
    """A video file (by its suffix) or a stream's URL."""
    return is_stream(item) or Path(str(item)).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    """The `av` module (PyAV); `MissingExtra` naming the extra where it is not installed."""
    try:
        import av
    except ImportError:
        raise MissingExtra("predicting videos needs PyAV, which this install of transferkit leaves out: "
                           "pip install 'transferkit[video]'") from None
    return av


def frames(source: str, every: float, duration: float | None = None) -> Iterator[tuple[float, object]]:
    """(time in seconds from the first frame, a PIL image) of one frame every `every` seconds of
    `source` (a file or a stream's URL), for at most `duration` seconds; raises `UserError` naming
    the source when it cannot be opened or read."""
    av = require_av()
    options = {"rtsp_transport": "tcp"} if str(source).lower().startswith(("rtsp://", "rtsps://")) else {}
    try:
        container = av.open(str(source), options=options, timeout=OPEN_TIMEOUT if is_stream(source) else None)
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"{source}: cannot be opened as a video ({_reason(exc)})") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{source}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # (FFmpeg's frame and slice threads)
        first, due, index = None, 0.0, 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else index / float(stream.average_rate or 25)
                index += 1
                first = t if first is None else first
                t -= first
                if duration is not None and t > duration:
                    break
                if t + 1e-6 >= due:
                    yield round(t, 3), frame.to_image()
                    due = (np.floor(t / every + 1e-6) + 1) * every
        except av.error.FFmpegError as exc:
            if index == 0:
                raise UserError(f"{source}: cannot be decoded ({_reason(exc)})") from None
            raise VideoCut(f"{source}: decoding stopped at {t:.1f} s ({_reason(exc)}); the frames before are "
                           "predicted") from None


class VideoCut(UserError):
    """A video that could be read only up to some frame (damaged or cut short)."""


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0]


@dataclass
class VideoPrediction:
    """One video's sampled frames (time, probabilities) and its segments."""

    path: str
    times: list[float] = field(default_factory=list)
    probs: np.ndarray | None = None  # (frames, classes)
    ood: np.ndarray | None = None  # (frames,) or None
    unusable: int = 0  # frames the model could not take
    warning: str | None = None  # why the video ended early, if it did

    def segments(self, classes: list[str], task: Task, every: float) -> list[dict]:
        """Runs of one label after smoothing: {start, end (seconds), label, probability (its mean)}."""
        if self.probs is None or not len(self.times):
            return []
        smoothed = smooth(self.probs, 2 * int(round(SMOOTH_SECONDS / every / 2)) + 1)  # (odd: centred on the frame)
        labels = _labels(smoothed, classes, task)
        out: list[dict] = []
        for i, label in enumerate(labels):
            end = self.times[i + 1] if i + 1 < len(self.times) else self.times[i] + every
            if out and out[-1]["label"] == label:
                out[-1]["end"], out[-1]["_rows"] = end, out[-1]["_rows"] + [i]
            else:
                out.append({"start": self.times[i], "end": end, "label": label, "_rows": [i]})
        for seg in out:
            rows = seg.pop("_rows")
            seg["end"] = round(float(seg["end"]), 3)
            seg["probability"] = round(float(smoothed[rows].max(1).mean()), 4)
        return out


def smooth(probs: np.ndarray, window: int) -> np.ndarray:
    """Each row the mean of the `window` rows centred on it (fewer at the ends)."""
    if window <= 1 or len(probs) <= 1:
        return probs
    kernel = np.ones(window)
    pad = window // 2
    total = np.stack([np.convolve(probs[:, c], kernel, mode="full")[pad:pad + len(probs)]
                      for c in range(probs.shape[1])], 1)
    counts = np.convolve(np.ones(len(probs)), kernel, mode="full")[pad:pad + len(probs)]
    return total / counts[:, None]


def _labels(probs: np.ndarray, classes: list[str], task: Task) -> list[str]:
    if task.multi:
        return [task.joiner.join(c for c, yes in zip(classes, row) if yes) for row in task.decide(probs)]
    return [classes[i] for i in probs.argmax(1)]


def predict_video(predictor, source: str, every: float, duration: float | None = None,
                  progress=None) -> VideoPrediction:
    """Predict the frames `frames` samples from `source` with `predictor`; a video that stops
    decoding part-way keeps the frames before (`warning` says where)."""
    out = VideoPrediction(source)
    probs, oods = [], []
    batch: list[tuple[float, object]] = []

    def flush() -> None:
        logits, ood, errors = predictor.scored([image for _, image in batch])
        keep = [i for i in range(len(batch)) if i not in errors]
        out.unusable += len(errors)
        out.times.extend(batch[i][0] for i in keep)
        probs.append(predictor.task.probabilities(logits[keep]))
        if ood is not None:
            oods.append(ood[keep])
        if progress is not None:
            progress.update(len(batch))
        batch.clear()

    try:
        for item in frames(source, every, duration):
            batch.append(item)
            if len(batch) == BATCH:
                flush()
    except VideoCut as exc:
        out.warning = str(exc)
    if batch:
        flush()
    out.probs = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)), np.float32)
    out.ood = np.concatenate(oods) if oods else None
    return out


VIDEO_HEADS = (b"path,time_s,label,probability,", b'[\n  {\n    "path": ', b"[]\n")  # what predict writes for videos


def csv_header(top_k: int) -> list[str]:
    return ["path", "time_s", "label", "probability"] + [f"{kind}_{k}" for k in range(2, top_k + 1)
                                                         for kind in ("label", "probability")] + ["segment_label"]


def csv_rows(video: VideoPrediction, classes: list[str], task: Task, every: float, top_k: int) -> list[list]:
    """One row per sampled frame: its time, its top labels and the label of its segment."""
    segments = video.segments(classes, task, every)
    rows = []
    for i, t in enumerate(video.times):
        p = video.probs[i]
        order = np.argsort(-p)[:top_k]
        label = _labels(p[None], classes, task)[0] if task.multi else classes[order[0]]
        segment = next(s["label"] for s in segments if s["start"] <= t < s["end"] or s is segments[-1])
        rows.append([video.path, t, label, round(float(p[order[0]]), 4),
                     *[v for j in order[1:] for v in (classes[j], round(float(p[j]), 4))], segment])
    return rows


def to_json(video: VideoPrediction, classes: list[str], task: Task, every: float, top_k: int) -> dict:
    frames_out = []
    for i, t in enumerate(video.times):
        p = video.probs[i]
        order = np.argsort(-p)[:top_k]
        frames_out.append({"time_s": t, "label": _labels(p[None], classes, task)[0],
                           "top": [{"label": classes[j], "probability": round(float(p[j]), 4)} for j in order],
                           **({"ood_score": round(float(video.ood[i]), 4)} if video.ood is not None else {})})
    return {"path": video.path, "every_s": every, "frames": frames_out,
            "segments": video.segments(classes, task, every), "unusable_frames": video.unusable,
            **({"warning": video.warning} if video.warning else {})}
