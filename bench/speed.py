"""Speed benchmark: the plain PyTorch recipe vs transferkit, side by side in one run.

    python bench/speed.py DATASET [--epochs 3] [--ft-epochs 2]

Each variant runs in its own process (wall time and peak RSS are per process, imports included):
  (a) plain recipe: frozen backbone, Adam on the head, RandomResizedCrop + flip,
      a full fp32 NCHW forward per image per epoch, `--epochs` epochs;
  (b) one plain fp32 pass over every image + scikit-learn logistic regression;
  (c) `transferkit train DATASET` with defaults, cold cache;
  (d) the same command again, warm cache;
  (e) fine-tuning over `--ft-epochs` epochs: plain fp32 loop vs `transferkit train --strategy finetune`.
Prints a table and the ratios. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# -- the plain recipe (what tutorials do), run in a child process ------------------------------


def plain(dataset: str, mode: str, epochs: int) -> dict:
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from transferkit import backbones

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
            loader = torch.utils.data.DataLoader(ds, batch_size=32)
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
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--child", choices=["head", "logreg", "finetune"], help=argparse.SUPPRESS)
    ap.add_argument("--skip-finetune", action="store_true")
    args = ap.parse_args()
    if args.child:
        epochs = args.ft_epochs if args.child == "finetune" else args.epochs
        print(json.dumps(plain(args.dataset, args.child, epochs)))
        return

    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    py, tk = sys.executable, [sys.executable, "-m", "transferkit.cli"]
    rows = []

    def plain_row(label, child):
        r = run_child([py, str(HERE), args.dataset, "--child", child, "--epochs", str(args.epochs),
                       "--ft-epochs", str(args.ft_epochs)], env)
        r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
        rows.append((label, r))
        return r

    def tk_row(label, out, *extra):
        r = run_child(tk + ["train", args.dataset, "--out", str(work / out), "--quiet", *extra], env)
        res = json.loads((work / out / "results.json").read_text())
        r.update(val_acc=res["val_acc"], images=res["num_train"] + res["num_val"], results=res)
        r.pop("stdout")
        rows.append((label, r))
        return r

    a = plain_row(f"(a) plain: frozen fp32 forward each epoch, {args.epochs} epochs", "head")
    b = plain_row("(b) plain: one fp32 pass + sklearn LogisticRegression", "logreg")
    c = tk_row("(c) transferkit train (defaults), cold cache", "cold")
    d = tk_row("(d) transferkit train (defaults), warm cache", "warm")
    if not args.skip_finetune:
        e1 = plain_row(f"(e1) plain fine-tune fp32 NCHW, {args.ft_epochs} epochs", "finetune")
        e2 = tk_row(f"(e2) transferkit fine-tune, {args.ft_epochs} epochs", "ft",
                    "--strategy", "finetune", "--epochs", str(args.ft_epochs))
        n_train = e2["results"]["num_train"]
        # training passes only (validation excluded), as timed for the plain loop
        e2["train_s"] = sum(float(line.split(",")[-1]) for line in
                            (work / "ft" / "metrics.csv").read_text().splitlines()[1:])
        e2["images"] = n_train * args.ft_epochs
        for r in (e1, e2):
            r["img_s"] = r["images"] / r["train_s"]

    print(f"\ndataset: {args.dataset}   machine: {os.cpu_count()} cores\n")
    print("| variant | wall s | img/s | val acc | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for label, r in rows:
        img_s = r.get("img_s", r["images"] / r["wall_s"])
        print(f"| {label} | {r['wall_s']:.1f} | {img_s:.1f} | {r['val_acc']:.4f} | {r['peak_rss_mb']:.0f} |")
    print("\nratios:")
    print(f"- cold-cache train / (b) wall time: {c['wall_s'] / b['wall_s']:.2f}x   (target <= 0.33x)")
    print(f"- cold-cache train / (a) wall time: {c['wall_s'] / a['wall_s']:.2f}x")
    print(f"- warm-cache train wall time: {d['wall_s']:.2f} s   (target <= 3 s)")
    print(f"- accuracy, cold train - (b): {100 * (c['val_acc'] - b['val_acc']):+.1f} pt   (target >= -0.5)")
    if not args.skip_finetune:
        print(f"- fine-tune images/s, ours / plain: {e2['img_s'] / e1['img_s']:.2f}x   (target >= 3x); "
              f"accuracy ours - plain: {100 * (e2['val_acc'] - e1['val_acc']):+.1f} pt")
    print(f"- peak RSS of transferkit train: {max(c['peak_rss_mb'], d['peak_rss_mb']):.0f} MB   (target <= 3072)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
