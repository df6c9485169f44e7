"""--resume: a run killed mid-training continues to the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import transferkit
from helpers import interrupted_after_first_epoch, make_dataset

OPTS = ["--model", "squeezenet1_1", "--weights", "none", "--strategy", "finetune", "--epochs", "4",
        "--batch-size", "2", "--seed", "3", "--quiet"]


def _cli(*args, env=None):
    return [sys.executable, "-m", "transferkit.cli", *args]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    env = {**os.environ}
    full = tmp_path / "full"
    subprocess.run(_cli("train", str(data), "--out", str(full), *OPTS), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    import torch  # noqa: F401 - before the run starts: the poll below reads checkpoints with it, and its first
    # import (seconds) outlasted the tiny run when this test ran alone ("finished before it could be killed")
    proc = subprocess.Popen(_cli("train", str(data), "--out", str(killed), *OPTS), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and "epoch" in _epoch_of(ckpt):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()

    done = subprocess.run(_cli("train", "--resume", str(killed), "--quiet"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (killed / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    assert not ckpt.exists()  # a finished run keeps no checkpoint


def _epoch_of(path) -> str:
    try:
        import torch

        return "epoch" if torch.load(path, weights_only=True)["epoch"] >= 1 else ""
    except Exception:  # noqa: BLE001 - being written right now: try again
        return ""


def test_interrupt_resume_and_more_epochs(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    # the recipe's random parts too (augmentation ops, MixUp/CutMix draws) and its state (the EMA)
    kw = dict(model="squeezenet1_1", weights="none", strategy="partial", epochs=3, batch_size=2, seed=1, quiet=True,
              augment="trivial", mixup=0.2, cutmix=1.0, ema=0.9, layer_decay=0.8)
    full = transferkit.train(data, out=str(tmp_path / "full"), **kw)

    with interrupted_after_first_epoch():
        cut = transferkit.train(data, out=str(tmp_path / "cut"), **kw)
    assert cut.results["interrupted"] and (cut.path / "checkpoint.pt").exists()
    import shutil

    longer = shutil.copytree(cut.path, tmp_path / "longer")
    extended = transferkit.train(resume=str(longer), epochs=5, quiet=True)
    assert extended.results["epochs_run"] == 5
    resumed = transferkit.train(resume=str(cut.path), quiet=True)
    assert resumed.results["epochs_run"] == 3 and not resumed.results["interrupted"]
    assert (resumed.path / "model.safetensors").read_bytes() == (full.path / "model.safetensors").read_bytes()


def test_resume_errors(tmp_path):
    with pytest.raises(transferkit.UserError, match="nothing to resume"):
        transferkit.train(resume=str(tmp_path))
    with pytest.raises(transferkit.UserError, match="give the dataset folder"):
        transferkit.train()
