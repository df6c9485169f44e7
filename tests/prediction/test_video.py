"""Predict on video (#42, part 3): `transferkit predict RUN clip.mp4 --every S` samples frames with
PyAV, predicts them, and cuts the video into smoothed segments; damaged videos and streams
without a bound are one line each."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import COLORS, file_tree, make_dataset
from transferkit.prediction import video
from transferkit.task import Task

av = pytest.importorskip("av", reason="PyAV (the video extra) is installed by make test")


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def make_video(path: Path, colours: list[str], seconds_each: float = 2.0, fps: int = 10) -> Path:
    """A small video: `seconds_each` of noisy frames of each colour in turn."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for colour in colours:
            for _ in range(int(seconds_each * fps)):
                pixels = np.clip(np.array(COLORS[colour]) + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    data = make_dataset(root / "data", classes=("blue", "red"), n_train=8, n_val=4)
    run = transferkit.train(data, out=str(root / "run"), model="resnet18", weights="none", image_size=64,
                            quiet=True, no_report=True).path
    clips = root / "clips"
    make_video(clips / "blue-then-red.mp4", ["blue", "red"])
    return Path(run), clips


def test_a_video_gives_a_row_per_sampled_frame_and_its_segments(setup, tmp_path):
    run, clips = setup
    before = file_tree(clips)
    proc = cli("predict", run, clips / "blue-then-red.mp4", "--every", "0.5")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [float(r["time_s"]) for r in rows] == [0.5 * i for i in range(8)]
    assert [r["segment_label"] for r in rows] == ["blue"] * 4 + ["red"] * 4
    assert {"label", "probability", "label_2", "probability_2"} <= set(rows[0])
    assert "8 frames; 0.0-2.0 s blue" in proc.stderr and "2.0-4.0 s red" in proc.stderr
    out = tmp_path / "clip.json"
    cli("predict", run, clips / "blue-then-red.mp4", "--duration", "1", "--output", out)
    found = json.loads(out.read_text())
    assert [f["time_s"] for f in found[0]["frames"]] == [0.0, 1.0]  # --every 1 (default), the first second only
    assert found[0]["segments"] == [{"start": 0.0, "end": 2.0, "label": "blue",
                                     "probability": found[0]["segments"][0]["probability"]}]
    assert file_tree(clips) == before


def test_a_damaged_video_is_a_warning_and_the_others_are_predicted(setup, tmp_path):
    run, clips = setup
    folder = tmp_path / "videos"
    make_video(folder / "red.mkv", ["red"], seconds_each=1.0)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    (folder / "half.mp4").write_bytes((clips / "blue-then-red.mp4").read_bytes()[:2000])
    proc = cli("predict", run, folder, "--output", tmp_path / "out.csv")
    assert "broken.mp4: cannot be opened as a video" in proc.stderr and "half.mp4" in proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert {r["path"] for r in rows} == {str(folder / "red.mkv")} and len(rows) == 1
    proc = cli("predict", run, folder / "broken.mp4", check=False)
    assert proc.returncode == 2 and "no video could be read" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("predict", run, "rtsp://127.0.0.1:9/camera", check=False)
    assert proc.returncode == 2 and "is a stream: give --duration" in proc.stderr
    proc = cli("predict", run, "rtsp://127.0.0.1:9/camera", "--duration", "1", check=False)  # nothing listens there
    assert proc.returncode == 2 and "rtsp://127.0.0.1:9/camera: cannot be opened" in proc.stderr
    proc = cli("predict", run, clips, "--every", "0", check=False)
    assert proc.returncode == 2 and "--every must be" in proc.stderr


def test_a_flicker_is_smoothed_out_of_the_segments():
    probs = np.array([[0.9, 0.1]] * 5 + [[0.2, 0.8]] + [[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 6)
    clip = video.VideoPrediction("x.mp4", times=[0.5 * t for t in range(16)], probs=probs)
    segments = clip.segments(["cat", "dog"], Task(), every=0.5)  # 2 s: each frame and the 2 on either side
    assert [(s["start"], s["end"], s["label"]) for s in segments] == [(0.0, 5.0, "cat"), (5.0, 8.0, "dog")]
    assert video.smooth(probs, 1) is probs


def test_without_pyav_the_extra_is_named(monkeypatch):
    from transferkit.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtra, match=r"transferkit\[video\]"):
        video.require_av()
