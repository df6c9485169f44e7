"""LR range test: the suggestion rule on a known curve, and the command end to end."""

from __future__ import annotations

import json

import numpy as np

from helpers import make_dataset
from transferkit.cli import main
from transferkit.training.lrfind import suggest


def test_suggestion_is_steepest_descent():
    lrs = list(np.logspace(-6, 0, 61))
    losses = [1.0 / (1.0 + np.exp(2.5 * (np.log10(lr) + 3))) + 0.1 for lr in lrs]  # steepest at 1e-3
    assert 5e-4 < suggest(lrs, losses) < 2e-3


def test_lr_find_command(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    out = tmp_path / "lr"
    assert main(["lr-find", str(data), "--out", str(out), "--steps", "60"]) == 0  # not --quiet: the suggestion is printed
    text = capsys.readouterr().out
    assert "suggested learning rate for --optimizer adamw:" in text  # linear's L-BFGS has no LR
    saved = json.loads((out / "lr_find.json").read_text())
    assert 1e-7 <= saved["suggested_lr"] <= 1.0 and len(saved["lrs"]) == len(saved["losses"]) > 10
    assert (out / "lr_find.png").stat().st_size > 1000


def test_lr_find_network_strategy(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=1)
    import transferkit.api as api

    result = api.lr_find(data, model="squeezenet1_1", weights="none", strategy="partial", batch_size=3,
                         steps=6, out=str(tmp_path / "lr"), quiet=True)
    assert len(result.lrs) >= 2 and result.lrs == sorted(result.lrs)
