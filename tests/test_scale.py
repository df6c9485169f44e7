"""Training under torchrun (CPU, gloo, 2 processes): the group trains as one process with the
global batch would, feature strategies give byte-identical heads, two "nodes" finish one run,
a worker killed mid-run is restarted and the result equals an uninterrupted run's, and a rank
that fails stops the others with its error."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers import eps, make_dataset
from transferkit import api

# A network without BatchNorm (SqueezeNet), from random weights, on tiny images: what the
# parity of 2 x 8 and 1 x 16 is about is the gradients, not the accuracy.
NETWORK = ["--model", "squeezenet1_1", "--weights", "none", "--strategy", "finetune", "--epochs", "4",
           "--image-size", "96", "--optimizer", "sgd", "--lr", "0.01", "--quiet"]


def torchrun(data: Path, out: Path, *options: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",),
             cache: Path | None = None, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if cache is not None:
        env["TRANSFERKIT_CACHE"] = str(cache)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={nproc}",
           "-m", "transferkit", "train", str(data), "--out", str(out), *options]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr


def weights(run: Path) -> dict:
    """The model's weights (less the out-of-distribution score's reference features: derived from
    the weights, compared by `reference_difference`)."""
    return {k: v for k, v in load_file(run / "model.safetensors").items() if k != "ood.reference"}


def reference_difference(a: Path, b: Path) -> float:
    """The largest difference between two runs' OOD reference features (unit rows)."""
    ra, rb = (load_file(run / "model.safetensors")["ood.reference"] for run in (a, b))
    assert ra.shape == rb.shape
    return (ra - rb).abs().max().item()


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("scale") / "data", n_train=24, n_val=4)


@pytest.fixture(scope="module")
def network(precision) -> list[str]:
    """NETWORK in the tests' precision (not what this CPU prefers: runs compared must match)."""
    return [*NETWORK, "--precision", precision]


@pytest.fixture(scope="module")
def reference(data, network, tmp_path_factory):
    """An uninterrupted run of 2 processes x batch 8."""
    out = tmp_path_factory.mktemp("ref") / "run"
    stdout, stderr = torchrun(data, out, *network, "--batch-size", "8", cache=tmp_path_factory.mktemp("cache"))
    return out, stdout, stderr


@pytest.mark.precision
def test_two_processes_train_as_one_with_the_global_batch(data, network, precision, reference, tmp_path):
    run, stdout, stderr = reference
    assert stdout == "" and "warning" not in stderr  # --quiet: and the other rank prints nothing either
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("model")) == ["model.json", "model.safetensors"]
    assert not (run / "checkpoint.pt").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["distributed"] == {"world_size": 2, "nodes": 1, "processes_per_node": 2, "backend": "gloo"}
    assert results["strategy_info"]["batch"] == {"per_process": 8, "processes": 2, "global": 16, "lr": 0.01,
                                                 "sync_bn": False}
    trained = weights(run)
    assert not any(k.startswith("module.") for k in trained)  # saved from the model, not its DDP wrapper

    one = api.train(data, out=str(tmp_path / "one"), batch_size=16, **_options(network))
    assert one.results["strategy_info"]["batch"]["global"] == 16
    # The two runs sum the same gradients in another order. In fp32 that moves the weights by
    # float noise (1e-5: measured 1e-6). In bf16 each gradient carries a relative rounding error
    # of up to eps(bf16) = 2^-8, so SGD's STEPS updates of lr * |g| (|g| <= 1 here) may differ by
    # STEPS * lr * eps: 12 * 0.01 * 2^-8 = 4.7e-4 (measured 2.3e-4 on a CPU with AMX).
    steps, lr = 4 * (48 // 16), 0.01
    assert max_difference(trained, weights(tmp_path / "one")) < max(1e-5, steps * lr * eps(precision))
    # the reference features the OOD score compares with: the same images through those weights
    assert reference_difference(run, tmp_path / "one") < max(1e-4, 10 * steps * lr * eps(precision))
    assert one.results["best_epoch"] == results["best_epoch"]
    # a val loss (about 0.7 here) computed through bf16 activations: a few eps of itself; in fp32 the
    # weights' float noise (two processes of one thread against one of two: other summation orders)
    # moved it by up to 2.6e-5 on an AVX-512 CPU (Zen 4), hence 1e-4
    assert _val_losses(run) == pytest.approx(_val_losses(tmp_path / "one"), abs=max(1e-4, 2 * eps(precision)))


def test_sharded_features_fit_the_same_head(data, tmp_path):
    """2 processes each extract and keep their share of the features (cold; each writes what it
    computed to its cache) and fit the head on them together: cross-validation, standardization
    and the fit data-parallel, the val-train near-copy search by shards. One process on the same
    features (warm, from that cache) fits the same head to float32 round-off, with the same
    choice, predictions and health. Only the primary logs to the tracker (--track)."""
    cache = tmp_path / "cache"
    track = ["--track", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    torchrun(data, tmp_path / "two", "--strategy", "linear", "--image-size", "64", "--quiet", *track, cache=cache)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    info = two["strategy_info"]
    assert info["features_computed"] == 56 and two["distributed"]["world_size"] == 2
    assert info["features_sharded"] == {"ranks": 2, "train_rows_here": 24}  # of 48: no rank held them all
    if track:  # event files are named ...tfevents.<time>.<host>.<pid>.<n>: one process wrote them
        assert len({p.name.split(".")[-2] for p in (tmp_path / "two" / "tensorboard").rglob("*tfevents*")}) == 1
    writers = {p.name.split("-")[1] for p in (cache / "features").rglob("*.idx")}
    assert len(writers) == 2  # each process wrote its share
    os.environ["TRANSFERKIT_CACHE"], saved = str(cache), os.environ["TRANSFERKIT_CACHE"]
    try:
        one = api.train(data, out=str(tmp_path / "one"), strategy="linear", image_size=64, quiet=True)
    finally:
        os.environ["TRANSFERKIT_CACHE"] = saved
    assert one.results["strategy_info"]["features_computed"] == 0
    head_one, head_two = one.results["strategy_info"]["head"], info["head"]
    assert {k: head_two[k] for k in ("features", "scaling", "weight_decay", "folds", "cv_groups")} == \
        {k: head_one[k] for k in ("features", "scaling", "weight_decay", "folds", "cv_groups")}
    # the sums over 2 processes are in another order (float64 round-off): each CV log loss within 1e-4
    # (rounded to 5 decimals), the head within 1e-5 of its largest weight (measured: 0 here)
    assert [r["cv_log_loss"] for r in head_two["candidates"]] == \
        pytest.approx([r["cv_log_loss"] for r in head_one["candidates"]], abs=1e-4)
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for k in ("head.weight", "head.bias"):
        assert (a[k] - b[k]).abs().max().item() <= 1e-5 * max(1.0, b[k].abs().max().item())
    assert (tmp_path / "two" / "predictions.csv").read_text() == (tmp_path / "one" / "predictions.csv").read_text()
    assert two["data_health"] == one.results["data_health"]


def test_two_nodes_finish_one_run(data, network, reference, tmp_path):
    """Two torchrun commands (--nnodes 2, one process each, each its own cache: no shared
    filesystem but the run folder's) make one run folder, equal to one node's two processes."""
    port = _free_port()
    nodes = [torchrun(data, tmp_path / "run", *network, "--batch-size", "8", nproc=1, wait=False,
                      cache=tmp_path / f"cache{rank}",
                      launcher=("--nnodes=2", f"--node-rank={rank}", "--master-addr=127.0.0.1",
                                f"--master-port={port}"))
             for rank in (0, 1)]
    outputs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert outputs[1] == ("", "")  # the second node's process writes nothing and says nothing
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["distributed"]["nodes"] == 2
    assert max_difference(weights(tmp_path / "run"), weights(reference[0])) < 1e-6


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(data, network, reference, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(data, out, *network, "--batch-size", "8", wait=False,
                    launcher=("--standalone", "--max-restarts=1"))
    killed = None
    deadline = time.monotonic() + 240
    while proc.poll() is None and killed is None and time.monotonic() < deadline:
        if (out / "checkpoint.pt").exists():  # an epoch is done: kill rank 1 in the next one
            worker = next((pid for pid in _children(proc.pid) if _environ(pid).get("LOCAL_RANK") == "1"), None)
            if worker is not None:
                time.sleep(0.2)
                os.kill(worker, signal.SIGKILL)
                killed = worker
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, stderr[-3000:]
    # torchrun saw the group fail (the killed worker, or first its peer's lost connection) and,
    # since the command succeeded, restarted it
    assert "failed (exitcode: " in stderr
    assert max_difference(weights(out), weights(reference[0])) < 1e-6
    assert _val_losses(out) == _val_losses(reference[0])
    assert not (out / "checkpoint.pt").exists()


def test_a_failing_rank_stops_the_group_with_its_error(data, tmp_path):
    """A node whose data folder is missing fails in one line; the other node stops too (no
    hang) and says why; no traceback."""
    port = _free_port()
    started = time.monotonic()
    nodes = [torchrun(data if rank == 0 else tmp_path / "not-mounted", tmp_path / "run", "--quiet", nproc=1,
                      wait=False, launcher=("--nnodes=2", f"--node-rank={rank}", "--master-addr=127.0.0.1",
                                            f"--master-port={port}"))
             for rank in (0, 1)]
    outputs = [n.communicate(timeout=240) for n in nodes]
    assert time.monotonic() - started < 200
    assert all(n.returncode != 0 for n in nodes)
    worker_lines = [line for _, err in outputs for line in err.splitlines() if line.startswith("error: ")]
    assert any("dataset folder not found" in line and "not-mounted" in line for line in worker_lines), outputs
    assert any("another process of this torchrun group stopped" in line for line in worker_lines)
    assert not any("[rank" in line and "Traceback" in line for _, err in outputs for line in err.splitlines())


def test_nproc_launches_torchrun(data, tmp_path):
    from transferkit.cli import main

    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--nproc", "2", "--strategy", "linear", "--image-size", "64",
                 "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["distributed"]["world_size"] == 2
    assert main(["train", str(tmp_path / "missing"), "--nproc", "2", "--quiet"]) == 2


def _options(flags: list[str]) -> dict:
    out, i = {}, 0
    while i < len(flags):
        key = flags[i][2:].replace("-", "_")
        if key == "quiet":
            out[key], i = True, i + 1
            continue
        value = flags[i + 1]
        out[key] = int(value) if value.isdigit() else float(value) if value.replace(".", "", 1).isdigit() else value
        i += 2
    return out


def _val_losses(run: Path) -> list[float]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[3]) for line in lines]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def test_predictions_written_as_they_come_are_the_whole_document():
    """`predict` writes chunk by chunk: the same CSV and JSON as written all at once."""
    import io

    from transferkit.prediction.outputs import Prediction, PredictionWriter, to_csv, to_json

    preds = [Prediction(f"/x/{i}.jpg", "a", 0.9, [("a", 0.9), ("=b", 0.1)]) for i in range(5)]
    preds.insert(2, Prediction("/x/bad.jpg", None, None, [], "not an image"))
    for kind, whole in (("csv", to_csv(preds, 2)), ("json", to_json(preds))):
        out = io.StringIO()
        writer = PredictionWriter(out, kind, 2)
        for start in range(0, len(preds), 4):
            writer.write(preds[start:start + 4])
        writer.close()
        assert out.getvalue() == whole
    empty = io.StringIO()
    PredictionWriter(empty, "json", 1).close()
    assert empty.getvalue() == to_json([])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_no_process_outlives_the_launcher_and_nproc_is_bounded_by_the_cores(data, tmp_path, capsys):
    """--nproc beyond the cores is refused with the reason; a launcher killed with SIGKILL (no
    chance to clean up) takes torchrun and both training processes with it; one sent SIGTERM
    passes it on, and all end, with one line."""
    from transferkit.cli import main
    from transferkit.machine import usable_cores

    assert main(["train", str(data), "--nproc", str(usable_cores() + 1), "--quiet"]) == 2
    assert "CPU core" in capsys.readouterr().err
    for sig in (signal.SIGKILL, signal.SIGTERM):
        out = tmp_path / f"r{int(sig)}"
        launcher = subprocess.Popen([sys.executable, "-m", "transferkit", "train", str(data), "--out", str(out),
                                     "--nproc", "2", *NETWORK, "--epochs", "500"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started: list[int] = []
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and launcher.poll() is None:
                started = _descendants(launcher.pid)
                if len(started) >= 3 and (out / "config.yaml").exists():  # torchrun and 2 training
                    break
                time.sleep(0.5)
            assert len(started) >= 3 and launcher.poll() is None, "the training processes never started"
            os.kill(launcher.pid, sig)
            code = launcher.wait(timeout=90)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(_running(p) for p in started):
                time.sleep(0.5)
            assert not [p for p in started if _running(p)], f"processes outlived the launcher ({sig.name})"
            if sig == signal.SIGTERM:  # passed on, and said in one line: no traceback of torchrun's
                err = launcher.stderr.read()
                assert code == 143 and err.startswith("stopped: ") and "Traceback" not in err, err
        finally:
            for pid in [launcher.pid, *started, *_descendants(launcher.pid)]:  # none left, even when it failed
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def test_data_parallel_head_fits_the_same_head(tmp_path):
    """The logistic-regression head with its rows split over 2 gloo processes (each holding its
    share; loss and gradient summed over the group): the same head as one process to the
    optimizer's tolerance; with one process, `Logistic`'s numbers exactly."""
    from sharded_head_worker import fit, synthetic

    from transferkit.logistic import Logistic, ShardedLogistic, identity, standardizer

    x, y = synthetic()
    mean, std = standardizer(x)
    one = Logistic((x - mean) / std, y, 4, 0.01, True)
    expected, _ = one.fit(one.start(), 500, 1e-6)
    theta, mean1, std1, (loss1, acc1), _ = fit(x, y, 4, identity, np.arange(len(x)))
    np.testing.assert_allclose(mean1, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(std1, std, rtol=1e-12)
    same = ShardedLogistic((x - mean) / std, y, 4, 0.01, True)  # on the same rows: the same numbers, exactly
    assert np.array_equal(same.fit(same.start(), 500, 1e-6)[0], expected)
    assert np.abs(theta - expected).max() < 1e-9
    chunked = ShardedLogistic((x - mean) / std, y, 4, 0.01, True)
    chunked.CHUNK = 700  # 3000 rows in 5 chunks (memory flat in the rows): the same objective to round-off
    halfway = expected / 2  # (at the optimum the gradient is all round-off)
    (la, ga), (lb, gb) = same.objective(halfway), chunked.objective(halfway)
    assert abs(la - lb) <= 1e-12 * abs(la) and np.abs(ga - gb).max() <= 1e-12 * np.abs(ga).max()
    assert chunked.stats(chunked.z, y, expected) == pytest.approx(same.stats(same.z, y, expected), rel=1e-12)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    out = tmp_path / "two.npz"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(Path(__file__).with_name("sharded_head_worker.py")), str(out)], env=env, check=True,
                   capture_output=True, timeout=300)
    two = np.load(out)
    assert int(two["world"]) == 2
    # the statistics and the gradients are sums in another order (float64 round-off), so L-BFGS may
    # take other steps to the same optimum (within gtol 1e-6): the heads are held to 1e-6 and their
    # probabilities to 1e-7 (measured here: 5e-13 and 5e-13)
    np.testing.assert_allclose(two["mean"], mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(two["std"], std, rtol=1e-12)
    assert np.abs(two["theta"] - expected).max() < 1e-6 * max(1.0, np.abs(expected).max())
    z = (x - mean) / std
    p_one, p_two = np.exp(one.log_probs(z, expected)), np.exp(one.log_probs(z, two["theta"]))
    assert np.abs(p_one - p_two).max() < 1e-7
    assert float(two["acc"]) == pytest.approx(acc1, abs=1 / len(x)) and float(two["loss"]) == pytest.approx(loss1, rel=1e-6)


# -- bounded caches ----------------------------------------------------------------------------------


def test_decode_cache_limit_evicts_the_least_recently_used(tmp_path, capsys):
    """--cache-limit: the decoded images never take more than the limit (one process); a read
    marks an image used, so the images not read for longest go first; an image evicted is decoded
    again by the dataset; a size it cannot read is one line."""
    from transferkit.cache import Cache, parse_size
    from transferkit.cli import main

    assert parse_size("50GB") == 50 * 10**9 and parse_size("1.5 MiB") == 3 * 2**19 and parse_size(0) == 0
    assert parse_size("none") is None and parse_size("auto") == "auto"
    cache = Cache(tmp_path / "cache")
    entry = np.zeros((100, 100, 3), np.uint8)  # 30,000 bytes, 30,032 with its header and digest
    decoded = cache.decoded(224, "bicubic", 125_000)  # room for 4
    for i in range(3):
        decoded.put(f"{i:032x}", "img", entry + i)
        path = decoded._path(f"{i:032x}", "img")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))  # written in the past, 0 first
    assert decoded.get(f"{0:032x}", "img")[0, 0, 0] == 0  # 0 used now: 1 is the least recently used
    decoded.put(f"{3:032x}", "img", entry + 3)
    assert decoded.limit.evicted == 0
    decoded.put(f"{4:032x}", "img", entry + 4)  # past the limit: evicted down to 90% of it, the oldest first
    left = {int(p.stem, 16) for p in (tmp_path / "cache" / "decoded").rglob("*.img")}
    assert left == {0, 3, 4} and decoded.limit.evicted == 2
    for i in range(5, 12):
        decoded.put(f"{i:032x}", "img", entry + i)
        assert sum(p.stat().st_size for p in (tmp_path / "cache" / "decoded").rglob("*.img")) <= 125_000
    nothing = cache.decoded(224, "bicubic", 0)  # 0: keep none
    nothing.put("f" * 32, "img", entry)
    assert nothing.get("f" * 32, "img") is None
    auto = Cache(tmp_path / "auto").decoded(224, "bicubic", "auto")
    auto.put("e" * 32, "img", entry)  # the first write counts the files and sets the limit
    assert 0 < auto.limit.limit <= 64 * 10**9

    from helpers import make_dataset
    from transferkit.data.datasets import DecodedImages
    from transferkit.models.preprocess import Preprocess

    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    paths = sorted(str(p) for p in (data / "train").rglob("*.png"))
    images = DecodedImages(paths, [0] * len(paths), Preprocess(input_size=32), nothing, train=False)
    assert images[0][0].shape == (3, 32, 32)  # decoded again: the cache kept nothing
    assert main(["train", str(data), "--cache-limit", "lots"]) == 2
    assert "--cache-limit lots: give a size" in capsys.readouterr().err


def test_cache_compact_keeps_each_entry_once_and_info_names_the_datasets(tmp_path, capsys):
    """`cache compact` rewrites the shards as one, the newer of two copies of an entry kept, a
    damaged entry dropped, and every other entry read back the same; `cache info` gives the sizes
    per kind, backbone configuration and dataset."""
    from transferkit.cache import Cache
    from transferkit.cli import main

    cache = Cache(tmp_path / "cache").prepare()
    store = cache.features("m" * 24)
    for shard in range(3):
        for i in range(5):
            store.put(f"{i:032x}", "v0", np.full(8, shard * 10 + i, np.float32))
        store.put(f"{100 + shard:032x}", "v0", np.full(8, -shard, np.float32))
        store.flush()
    oldest = sorted(store.dir.glob("*.dat"))[0]
    raw = bytearray(oldest.read_bytes())
    raw[-1] ^= 0xFF  # the oldest shard's last entry (key 100) damaged
    oldest.write_bytes(bytes(raw))
    store.record_dataset({"data": "/photos", "backbone": "efficientnet_lite0"}, 5,
                         store.entry_bytes([f"{i:032x}" for i in range(5)], ["v0"]))
    assert main(["cache", "compact", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert "3 -> 1 shards" in out and "10 duplicate and 1 damaged entries dropped" in out
    again = cache.features("m" * 24)
    assert len(list(again.dir.glob("*.idx"))) == 1
    assert [float(again.get(f"{i:032x}", "v0")[0]) for i in range(5)] == [20, 21, 22, 23, 24]
    assert again.get(f"{100:032x}", "v0") is None and float(again.get(f"{102:032x}", "v0")[0]) == -2
    assert main(["cache", "info", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert f"features/{'m' * 24}: 1 shards" in out
    assert "/photos: efficientnet_lite0, 5 images, 0.0 MB" in out


def test_scale_simulation_runs_at_a_tiny_scale(tmp_path):
    """bench/scale_sim.py at 20,000 synthetic rows x 64 features, 1 and 2 gloo processes: the
    sharded cross-validation, statistics, fit and evaluation give the same accuracy with 1 and 2
    processes, near the known best; rows kept as int8 read back as the float rows to their step."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    try:
        import scale_sim
    finally:
        sys.path.pop(0)
    mu = scale_sim.means(64, 5)
    x, y, index = scale_sim.shard(25_000, mu, 0, 1, 2)
    q, y8, index8 = scale_sim.shard(25_000, mu, 0, 1, 2, "int8")
    assert np.array_equal(y, y8) and np.array_equal(index, index8) and list(index[:2]) == [10_000, 10_001]
    top = 127 / scale_sim.SCALE  # (beyond it the int8 value is clipped: about 1 value in 10^7)
    assert np.abs(q[:] - np.clip(x, -top, top)).max() <= 0.5 / scale_sim.SCALE + 1e-6 and q[3:5].shape == (2, 64)
    out = tmp_path / "sim.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "scale_sim.py"), "--rows", "20000",
                           "--procs", "1,2", "--dim", "64", "--classes", "5", "--val-rows", "10000", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(out.read_text())
    assert (one["procs"], two["procs"], two["rows_per_proc"]) == (1, 2, 10_000)
    assert two["val_acc"] == pytest.approx(one["val_acc"], abs=1e-3) and one["val_acc"] >= one["best_acc"] - 0.03
    from transferkit.training.heads import cv_images

    sample = cv_images(5)  # (a stratified sample of that many, to rounding per class)
    assert two["cv_weight_decay"] == one["cv_weight_decay"] and abs(one["cv_images"] - sample) <= 5
    assert set(one["peak_rss_mb_after"]) == {"started", "rows", "cv", "statistics", "fit", "evaluation"}
