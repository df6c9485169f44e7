"""The training loop: best epoch kept, early stopping, Ctrl-C, optimizers and schedules."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit
from helpers import interrupting_fit, make_dataset
from transferkit.training import loop, subscribers
from transferkit.runtime import Runtime

CPU = Runtime(torch.device("cpu"), torch.float32)


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()
    x[:, 0] += torch.where(y == 1, 1.0, -1.0)  # a margin, so every optimizer can separate it
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=64)


def _fit(epochs, patience=0, on_epoch=None, optimizer="adamw", schedule="cosine", noisy_val=False):
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    train, val = _problem()
    if noisy_val:  # labels unrelated to the inputs: val stops improving early
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
        val = DataLoader(TensorDataset(x, torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(2))),
                         batch_size=64)
    opt = loop.make_optimizer(optimizer, [{"params": model.parameters()}], 0.1, 0.0)
    sched = loop.make_scheduler(schedule, opt, epochs * len(train))
    follow = [subscribers.EpochEnd(on_epoch)] if on_epoch is not None else []
    return loop.fit(loop.Step(model, opt, sched, nn.CrossEntropyLoss(), CPU), train, val, epochs,
                    [*follow, subscribers.EarlyStop(patience)])


def test_best_epoch_state_is_returned():
    result, best = _fit(5)
    assert len(result.history) == 5
    best_acc = max(s.val_acc for s in result.history)
    assert result.best_val_acc == best_acc
    assert result.history[result.best_epoch - 1].val_acc == best_acc
    assert set(best) == {"weight", "bias"}


def test_early_stopping_after_patience():
    result, _ = _fit(50, patience=2, noisy_val=True)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2 < 50


def test_ctrl_c_keeps_best_so_far():
    def interrupt(stats):
        if stats.epoch == 3:
            raise KeyboardInterrupt

    result, best = _fit(10, on_epoch=interrupt)
    assert result.interrupted and len(result.history) == 3
    assert result.best_epoch in (1, 2, 3) and best["weight"].shape == (2, 8)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_optimizers_and_schedules_learn(optimizer, schedule):
    result, _ = _fit(6, optimizer=optimizer, schedule=schedule)
    assert result.best_val_acc >= 0.9


def test_subscribers_hear_the_named_events_in_order_and_may_stop_the_loop():
    heard = []

    class Listener(loop.Subscriber):
        def __init__(self, name, stop_at=None):
            self.name, self.stop_at = name, stop_at

        def fit_start(self, state):
            heard.append((self.name, "fit_start"))

        def epoch_start(self, state, epoch):
            heard.append((self.name, "epoch_start", epoch))
            if epoch == self.stop_at:
                state.stop("listener")

        def step_end(self, state, step, tally):
            heard.append((self.name, "step_end", step, round(tally.loss, 6) > 0))

        def epoch_end(self, state, stats):
            heard.append((self.name, "epoch_end", stats.epoch, state.result.best_epoch >= 1))

        def fit_end(self, state):
            heard.append((self.name, "fit_end"))

    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    train, val = _problem()  # 4 training batches an epoch
    opt = loop.make_optimizer("sgd", [{"params": model.parameters()}], 0.1, 0.0)
    result, _ = loop.fit(loop.Step(model, opt, loop.make_scheduler("constant", opt, 40), nn.CrossEntropyLoss(), CPU),
                         train, val, 5, [Listener("a", stop_at=3), Listener("b")])
    assert result.stopped_early and result.stopped_by == "listener" and len(result.history) == 2
    epoch_1 = [("a", "epoch_start", 1), ("b", "epoch_start", 1)]
    epoch_1 += [(who, "step_end", n, True) for n in range(1, 5) for who in "ab"]
    epoch_1 += [("a", "epoch_end", 1, True), ("b", "epoch_end", 1, True)]
    assert heard[:2] == [("a", "fit_start"), ("b", "fit_start")] and heard[2:2 + len(epoch_1)] == epoch_1
    # epoch 3 is not trained: "a" stopped the loop, so "b" never heard it start; every one hears the end
    assert heard[-3:] == [("a", "epoch_start", 3), ("a", "fit_end"), ("b", "fit_end")]


def test_interrupted_run_still_writes_outputs(tmp_path, monkeypatch):
    """Ctrl-C during training: the run folder is complete, with the best epoch so far."""
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    monkeypatch.setattr(loop, "fit", interrupting_fit(2))
    run = transferkit.train(data, optimizer="adamw", epochs=10, out=str(tmp_path / "r"), quiet=True)
    assert run.results["interrupted"] and run.results["epochs_run"] == 2
    assert (run.path / "model.safetensors").is_file() and (run.path / "curves.png").is_file()


def _depthwise_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 5, stride=2, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),  # depthwise, strided
        nn.Conv2d(8, 16, 3, padding=1, groups=8),  # channel multiplier 2, with bias
        nn.Conv2d(16, 16, 3, padding="same", groups=16, bias=False),  # string padding: left to autocast
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    ).to(memory_format=torch.channels_last)


def _grads(net: nn.Module, context) -> list[torch.Tensor]:
    x = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last).requires_grad_(True)
    net.zero_grad()
    with context():
        loss = nn.functional.cross_entropy(net(x).float(), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    return [x.grad] + [p.grad.clone() for p in net.parameters()]


def test_bf16_training_computes_depthwise_weight_gradients_in_fp32():
    """Runtime.autocast on CPU in bf16: depthwise weight gradients come from fp32 (closer to the
    fp32 reference than bf16's), and every gradient agrees with plain autocast's; the forward is
    unchanged and without gradients nothing is intercepted."""
    from transferkit.runtime import DepthwiseGradFp32, _DepthwiseConv

    bf16 = Runtime(torch.device("cpu"), torch.bfloat16)
    net = _depthwise_net()
    ours = _grads(net, bf16.autocast)
    plain = _grads(net, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    ref = _grads(net, contextlib.nullcontext)
    for a, b, r in zip(ours, plain, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        if r.norm() > (b - r).norm():
            assert nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0) > 0.99
        else:  # zero in fp32 (a conv bias before BatchNorm): bf16 gives rounding noise, ours no more of it
            assert (a - r).norm() <= 1.5 * (b - r).norm()
    depthwise = [i + 1 for i, p in enumerate(net.parameters()) if p.dim() == 4 and p.shape[1] == 1]
    assert len(depthwise) == 3
    for i in depthwise[:2]:  # the two that the mode handles (not the string padding)
        assert (ours[i] - ref[i]).norm() <= (plain[i] - ref[i]).norm() * 1.01
    calls = []
    original = _DepthwiseConv.apply
    try:
        _DepthwiseConv.apply = lambda *a: calls.append(1) or original(*a)
        x = torch.randn(2, 3, 20, 20).contiguous(memory_format=torch.channels_last)
        with bf16.autocast():
            out = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = net(x)
        assert len(calls) == 2 and torch.equal(out, expected)
        with torch.no_grad(), DepthwiseGradFp32(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
        assert len(calls) == 2
    finally:
        _DepthwiseConv.apply = original
