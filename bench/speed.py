"""Speed benchmark: the plain PyTorch recipe vs transferkit, side by side in one run.

    python bench/speed.py DATASET [--epochs 3] [--ft-epochs 2] [--repeat N]

Each variant runs in its own process (wall time and peak RSS are per process, imports included):
  (a) plain recipe: frozen backbone, Adam on the head, RandomResizedCrop + flip,
      a full fp32 NCHW forward per image per epoch, `--epochs` epochs;
  (b) the plain probe: the timm model, one fp32 pass over every image through a torchvision
      DataLoader with 2 workers, scikit-learn's LogisticRegression;
  (f) `transferkit train DATASET` with defaults, the first run ever (empty cache: the backbone is
      converted for its engine too);
  (c) the same, cold: no feature cached, the backbone's engine prepared by a run on other data
      (the repository's sample);
  (d) the same command again, warm cache (and (d2) with --no-report);
  (p) `transferkit predict RUN` on 1,000 images, with --engine torch (the engine every command used
      before the engine layer) and with the default engine; (v) `transferkit eval RUN` likewise;
  (e) fine-tuning over `--ft-epochs` epochs: plain fp32 loop vs `transferkit train --strategy finetune`.
With `--baseline SRC`, the transferkit variants also run from another source tree (SRC/src, e.g.
`git worktree add /tmp/old HEAD~3`), in the same rounds, and the ratios new / baseline are
printed; `--skip-plain` leaves out the plain recipe and the probe, `--skip-recipe` the recipe only
(the goals' ratios are to the probe); `--light-python PY` and `--int8` add goals 5 and 6 (a light
install against this one: bench/light_install.py; INT8 features: bench/int8_engine.py). Prints a
table and the ratios. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SAMPLE = HERE.parents[1] / "samples" / "hymenoptera_small"  # other data, to prepare the engine on
PREDICT_IMAGES = 1000


# -- the plain recipe (what tutorials do), run in a child process ------------------------------


def plain(dataset: str, mode: str, epochs: int) -> dict:
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from transferkit.models import backbones

    torch.manual_seed(0)
    spec = backbones.get("efficientnet_lite0")
    pre = spec.preprocess
    net = spec.build_imagenet_classifier()
    net.load_state_dict(spec.imagenet_state_dict()[0])
    norm = transforms.Normalize(pre.mean, pre.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(pre.input_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(pre.resize_size), transforms.CenterCrop(pre.input_size),
                                  transforms.ToTensor(), norm])
    root = Path(dataset)
    train_eval = datasets.ImageFolder(root / "train", eval_tf)
    val = datasets.ImageFolder(root / "val", eval_tf)
    n_classes = len(train_eval.classes)
    images = 0
    if mode == "logreg":
        from sklearn.linear_model import LogisticRegression

        net.reset_classifier(0)
        net.eval()

        def feats(ds):
            loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)
            with torch.no_grad():
                out = [(net(x), y) for x, y in loader]
            return torch.cat([o[0] for o in out]).numpy(), torch.cat([o[1] for o in out]).numpy()

        xt, yt = feats(train_eval)
        xv, yv = feats(val)
        clf = LogisticRegression(max_iter=1000).fit(xt, yt)
        return {"val_acc": float(clf.score(xv, yv)), "images": len(xt) + len(xv)}

    finetune = mode == "finetune"
    net.reset_classifier(n_classes)
    if not finetune:
        for name, p in net.named_parameters():
            p.requires_grad = name.startswith("classifier")
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3 if not finetune else 1e-4)
    train = datasets.ImageFolder(root / "train", train_tf)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
            images += len(y)
    train_s = time.perf_counter() - start
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=32):
            correct += (net(x).argmax(1) == y).sum().item()
    return {"val_acc": correct / len(val), "images": images, "train_s": train_s}


# -- the driver ---------------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    # CPU seconds of the child (user + sys; its own children, such as DataLoader workers and the
    # report process, are not counted): on a contended host wall time drifts, CPU time less so.
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stdout": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--child", choices=["head", "logreg", "finetune"], help=argparse.SUPPRESS)
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--skip-plain", action="store_true", help="only the transferkit variants")
    ap.add_argument("--skip-recipe", action="store_true",
                    help="leave out (a), the plain recipe's epochs, but run (b), the probe the goals compare with")
    ap.add_argument("--baseline", help="another transferkit source tree to time beside this one (SRC/src)")
    ap.add_argument("--light-python", help="the python of a light install (bench/light_install.py --make-light): "
                                           "goal 5, the light install against this one, on the warm run")
    ap.add_argument("--int8", action="store_true", help="goal 6: INT8 features against fp32 (bench/int8_engine.py)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every variant; the table shows medians (this machine's noise is +-15%%)")
    args = ap.parse_args()
    if args.child:
        epochs = args.ft_epochs if args.child == "finetune" else args.epochs
        print(json.dumps(plain(args.dataset, args.child, epochs)))
        return

    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    # Python's bytecode cached, as every installed package has it (pip compiles at install): an
    # environment with PYTHONDONTWRITEBYTECODE set compiles transferkit's ~100 modules in every
    # process (0.1 s of a warm run), which no user's install does
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "TRANSFERKIT_CACHE": str(work / "cache")}
    py, tk = sys.executable, [sys.executable, "-m", "transferkit.cli"]
    rounds: list[dict[str, dict]] = []

    def plain_row(child):
        r = run_child([py, str(HERE), args.dataset, "--child", child, "--epochs", str(args.epochs),
                       "--ft-epochs", str(args.ft_epochs)], env)
        r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
        return r

    base_env = {**env, "PYTHONPATH": str(Path(args.baseline).resolve() / "src"),
                "TRANSFERKIT_CACHE": str(work / "cache-baseline")} if args.baseline else None

    def tk_row(out, *extra, baseline=False):
        r = run_child(tk + ["train", args.dataset, "--out", str(work / out), "--quiet", *extra],
                      base_env if baseline else env)
        res = json.loads((work / out / "results.json").read_text())
        r.update(val_acc=res["val_acc"], images=res["num_train"] + res["num_val"], results=res)
        r.pop("stdout")
        return r

    def predict_row(run, engine, command):
        files = [str(p) for p in sorted(Path(args.dataset).rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        files = (files * (PREDICT_IMAGES // len(files) + 1))[:PREDICT_IMAGES]
        if command == "predict":
            cmd = tk + ["predict", str(work / run), *files, "--output", str(work / f"{run}-{engine}.csv")]
        else:
            cmd = tk + ["eval", str(work / run), "--out", str(work / f"{run}-eval-{engine}-{time.monotonic_ns()}")]
        r = run_child(cmd + ["--engine", engine], env)
        r.pop("stdout")
        r["images"] = len(files) if command == "predict" else json.loads(
            (work / run / "results.json").read_text())["num_val"]
        r["val_acc"] = float("nan")
        return r

    labels = {
        "a": f"(a) plain: frozen fp32 forward each epoch, {args.epochs} epochs",
        "b": "(b) plain probe: timm + DataLoader (2 workers) + sklearn LogisticRegression",
        "f": "(f) transferkit train (defaults), first run ever (empty cache)",
        "c": "(c) transferkit train (defaults), cold: no features cached, engine prepared",
        "d": "(d) transferkit train (defaults), warm cache",
        "d2": "(d2) transferkit train (defaults) --no-report, warm cache",
        "p0": f"(p0) transferkit predict, {PREDICT_IMAGES} images, --engine torch",
        "p1": f"(p1) transferkit predict, {PREDICT_IMAGES} images, default engine",
        "v0": "(v0) transferkit eval RUN, --engine torch",
        "v1": "(v1) transferkit eval RUN, default engine",
        "e1": f"(e1) plain fine-tune fp32 NCHW, {args.ft_epochs} epochs",
        "e2": f"(e2) transferkit fine-tune, {args.ft_epochs} epochs",
    }
    if args.baseline:
        labels.update({f"{k}0": f"{labels[k]} [baseline]" for k in ("f", "c", "d", "e2")})
    for k in range(args.repeat):  # rounds run every variant in turn: slow spells hit all of them
        for cache in ("cache", "cache-baseline"):  # (c) is cold in every round
            shutil.rmtree(work / cache, ignore_errors=True)
        row = {}
        if not args.skip_plain:
            if not args.skip_recipe:
                row["a"] = plain_row("head")
            row["b"] = plain_row("logreg")
        versions = [("", False)] + ([("0", True)] if args.baseline else [])
        for suffix, baseline in versions:
            row["f" + suffix] = tk_row(f"first{k}{suffix}", baseline=baseline)
            # cold: a new cache in which a run on other data (the repository's sample) prepared
            # the backbone for its engine; none of this dataset's features is cached
            shutil.rmtree(work / ("cache-baseline" if baseline else "cache"), ignore_errors=True)
            run_child(tk + ["train", str(SAMPLE), "--out", str(work / f"prep{k}{suffix}"), "--quiet"],
                      base_env if baseline else env)
            row["c" + suffix] = tk_row(f"cold{k}{suffix}", baseline=baseline)
            row["d" + suffix] = tk_row(f"warm{k}{suffix}", baseline=baseline)
        row["d2"] = tk_row(f"warm{k}-noreport", "--no-report")
        for engine, key in (("torch", "0"), ("auto", "1")):
            row["p" + key] = predict_row(f"warm{k}", engine, "predict")
            row["v" + key] = predict_row(f"warm{k}", engine, "eval")
        for r in row.values():
            r["img_s"] = r["images"] / r["wall_s"]
        if not args.skip_finetune:
            if not args.skip_plain:
                row["e1"] = plain_row("finetune")
            for suffix, baseline in versions:
                row["e2" + suffix] = e2 = tk_row(f"ft{k}{suffix}", "--strategy", "finetune", "--epochs",
                                                 str(args.ft_epochs), baseline=baseline)
                # training passes only (validation excluded), as timed for the plain loop
                e2["train_s"] = sum(float(line.split(",")[-1]) for line in
                                    (work / f"ft{k}{suffix}" / "metrics.csv").read_text().splitlines()[1:])
                e2["images"] = e2["results"]["num_train"] * args.ft_epochs
                e2["img_s"] = e2["images"] / e2["train_s"]
            if "e1" in row:
                row["e1"]["img_s"] = row["e1"]["images"] / row["e1"]["train_s"]
        row["torch"] = run_child([py, "-c", "import torch"], env)  # the machine's speed in this round
        rounds.append(row)

    def median(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in rounds)

    from transferkit import machine as cpu

    facts = cpu.describe()
    print(f"\ndataset: {args.dataset}   machine: {os.cpu_count()} cores, {facts['cpu']}, native bf16: "
          f"{'yes' if facts['bf16'] else 'no'}, AMX: {'yes' if facts['amx'] else 'no'}   rounds: {args.repeat} "
          f"(each cell: the median over rounds; wall time also min-max)\n")
    print("| variant | wall s | wall s min-max | CPU s | img/s | val acc | peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|")
    for key in labels:
        if key not in rounds[0]:
            continue
        walls = [r[key]["wall_s"] for r in rounds]
        print(f"| {labels[key]} | {median(key, 'wall_s'):.1f} | {min(walls):.1f}-{max(walls):.1f} | "
              f"{median(key, 'cpu_s'):.1f} | "
              f"{median(key, 'img_s'):.1f} | {median(key, 'val_acc'):.4f} | {median(key, 'peak_rss_mb'):.0f} |")
    print("\nratios (medians; per round in brackets):")
    if args.baseline:
        for key, what in (("c", "cold train wall"), ("d", "warm train wall"), ("e2", "fine-tune img/s")):
            if key in rounds[0]:
                field = "img_s" if key == "e2" else "wall_s"
                ratio = [r[key][field] / r[key + "0"][field] for r in rounds]
                print(f"- {what}, this tree / baseline: {statistics.median(ratio):.2f}x {_each(ratio, 'x')}")
    if args.skip_plain:
        shutil.rmtree(work, ignore_errors=True)
        return
    floor = engine_floor(work / "cache")
    info = rounds[-1]["c"]["results"]["strategy_info"]
    images = rounds[-1]["c"]["images"]
    if floor:
        print(f"- the engine's own speed on this CPU: {floor:.0f} img/s (batch 32, random input): the floor for "
              f"{images} images is {images / floor:.1f} s; the cold run's feature pass took "
              f"{info.get('features_s', float('nan')):.1f} s (decoding and loading included), the whole run "
              f"{median('c', 'wall_s'):.1f} s")
    head = [r["c"]["results"]["strategy_info"]["head"]["seconds"] / r["c"]["results"]["strategy_info"]["features_s"]
            for r in rounds if "features_s" in r["c"]["results"]["strategy_info"]]
    if head:
        print(f"- the head's cross-validated choice / the feature pass (cold): {statistics.median(head):.3f} "
              f"{_each(head, '')}   (target <= 0.10)")
    cold = [r["c"]["wall_s"] / r["b"]["wall_s"] for r in rounds]
    first = [r["f"]["wall_s"] / r["b"]["wall_s"] for r in rounds]
    print(f"- cold train (engine prepared) / (b) wall time: {statistics.median(cold):.2f}x {_each(cold, 'x')}   "
          f"(target <= 0.25x); the first run ever: {statistics.median(first):.2f}x {_each(first, 'x')}   "
          "(target <= 0.5x)")
    if "a" in rounds[0]:
        print(f"- cold train / (a) wall time: {median('c', 'wall_s') / median('a', 'wall_s'):.2f}x")
    warm = [r["d"]["wall_s"] for r in rounds]
    print(f"- warm-cache train wall time: {statistics.median(warm):.2f} s {_each(warm, ' s')}, --no-report "
          f"{median('d2', 'wall_s'):.2f} s   (target <= 1.0 s)")
    for key, what in (("p", "predict img/s"), ("v", "eval img/s")):
        ratio = [r[key + "1"]["img_s"] / r[key + "0"]["img_s"] for r in rounds]
        print(f"- {what}, default engine / --engine torch: {statistics.median(ratio):.2f}x {_each(ratio, 'x')}   "
              "(target >= 2x)")
    print(f"- accuracy, cold train - (b): {100 * (median('c', 'val_acc') - median('b', 'val_acc')):+.1f} pt   "
          "(target >= -0.5)")
    if not args.skip_finetune:
        ft = [r["e2"]["img_s"] / r["e1"]["img_s"] for r in rounds]
        print(f"- fine-tune images/s, ours / plain: {statistics.median(ft):.2f}x {_each(ft, 'x')}   (target >= 3x); "
              f"accuracy ours - plain: {100 * (median('e2', 'val_acc') - median('e1', 'val_acc')):+.1f} pt")
    torch_s = [r["torch"]["wall_s"] for r in rounds]
    print(f"- for scale, `python -c 'import torch'`: {statistics.median(torch_s):.2f} s {_each(torch_s, ' s')}")
    rss = max(r[k]["peak_rss_mb"] for r in rounds for k in ("c", "d"))
    print(f"- peak RSS of transferkit train: {rss:.0f} MB   (target <= 3072)")
    if args.light_python:  # goal 5: a light install serves and predicts a run made here
        print("- " + relay([py, str(HERE.parent / "light_install.py"), str(work / f"warm{args.repeat - 1}"), args.dataset,
                            "--light-python", args.light_python, "--repeat", "1"], env, "light / full:")
              + "   (target: a light venv <= 500 MB)")
    if args.int8:  # goal 6: INT8 features as an engine choice
        print("- " + relay([py, str(HERE.parent / "int8_engine.py"), args.dataset, "--repeat", "1"], env, "int8 / fp32")
              + "   (auto keeps fp32: README, INT8 features)")
    shutil.rmtree(work, ignore_errors=True)


def engine_floor(cache: Path, batch: int = 32, seconds: float = 5.0) -> float | None:
    """The engine's own images/s on this CPU: ONNX Runtime on the backbone the cache converted
    (the largest .onnx under cache/engines: the multi-layer network of the default run), random
    input at batch 32, with the threads transferkit gives it; None where nothing was converted."""
    import numpy as np
    import onnxruntime as ort

    from transferkit.engines.convert import read_converted
    from transferkit.machine import usable_cores

    found = sorted((cache / "engines").glob("*.onnx"), key=lambda p: p.stat().st_size)
    converted = read_converted(found[-1]) if found else None
    if converted is None:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    session = ort.InferenceSession(converted.model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in spec.shape]
    rng = np.random.default_rng(0)  # (the conversions take the decoded uint8 images: normalization is in the graph)
    x = rng.integers(0, 256, shape, dtype=np.uint8) if "uint8" in spec.type else rng.random(shape, dtype=np.float32)
    session.run(None, {spec.name: x})  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {spec.name: x})
        done += shape[0]
    return done / (time.perf_counter() - start)


def relay(cmd: list[str], env: dict, prefix: str) -> str:
    """Runs another bench and returns its summary line (the one starting with `prefix`)."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(prefix)]
    if out.returncode or not lines:
        return f"{' '.join(cmd[1:3])} failed ({out.returncode}): {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    return lines[-1]


def _each(values: list[float], unit: str) -> str:
    return "[" + ", ".join(f"{v:.2f}{unit}" for v in values) + "]" if len(values) > 1 else ""

if __name__ == "__main__":
    main()
