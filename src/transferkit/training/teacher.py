"""Distillation's teacher: its logits for the very augmented view the student sees in each epoch
(consistent teaching), cached per view."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import DecodedImages
from ..errors import UserError
from ..runtime import Extractor
from ..files import file_sha256
from ..models import bundle
from .context import Context


class WithTeacher(Dataset):
    """A training dataset whose targets become (label, the teacher's logits for exactly this
    epoch's view of that image): `teacher_logits` is (epochs, N, C), row e for epoch e + 1."""

    def __init__(self, base: DecodedImages, teacher_logits: torch.Tensor):
        self.base, self.teacher_logits = base, teacher_logits

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, (label, self.teacher_logits[self.base.epoch - 1, i])


def check_teacher(teacher: str, classes: list[str]) -> None:
    """The teacher run must exist and know exactly these classes (in this order)."""
    meta, run_dir = bundle.read_meta(teacher)
    if meta.classes != classes:
        raise UserError(f"the teacher {run_dir} was trained on classes {', '.join(meta.classes)}; "
                        f"this dataset has {', '.join(classes)}")


class _ViewsOf(Dataset):
    """(row, image) pairs of a training dataset -> (epoch row + 1's augmented view, uint8; index)."""

    def __init__(self, base: DecodedImages, todo: list[tuple[int, int]]):
        self.base, self.todo = base, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int):
        e, i = self.todo[j]
        return self.base.view(i, e + 1), j


def teacher_logits(ctx: Context, train: DecodedImages) -> tuple[torch.Tensor, dict]:
    """The --teacher run's logits for every epoch's augmented view of every training image: the
    very crop the student sees, resized to the teacher's input size and normalized its way
    (consistent teaching: Beyer et al., 2022, "Knowledge distillation: a good teacher is patient
    and consistent"). Views are seeded by (seed, image, epoch), so the logits are cached per
    (teacher weights, student preprocessing, seed, image, epoch) and later runs reuse them.
    Returns (epochs, N, C) logits and facts for results.json."""
    check_teacher(ctx.cfg.teacher, ctx.split.classes)
    teacher, meta, run_dir = bundle.load(ctx.cfg.teacher)
    cache = ctx.cache.teacher({"teacher": file_sha256(run_dir / "model.safetensors"), "student": ctx.pre.to_dict(),
                               "seed": ctx.cfg.seed, "precision": ctx.runtime.precision})
    epochs, n, classes, group = ctx.cfg.epochs, len(train), len(ctx.split.classes), ctx.group
    out = torch.zeros(epochs, n, classes)
    todo = []
    for e in range(epochs):  # row e: the views of epoch e + 1 (epochs count from 1)
        for i, key in enumerate(train.keys):
            row = cache.get(key, f"e{e + 1}")
            if row is None or row.shape != (classes,):
                todo.append((e, i))
            else:
                out[e, i] = torch.from_numpy(row.copy())
    missing = set(todo)  # what this rank's cache lacks
    todo = group.union(todo)  # what any rank lacks is computed once, shared out, and exchanged
    mine = [todo[j] for j in group.share(len(todo))]
    computed: dict[tuple[int, int], torch.Tensor] = {}
    if mine:
        extractor = Extractor(teacher.backbone, meta.preprocess, ctx.runtime, batch_size=32)
        extractor.freeze = len(mine) >= 64
        head = teacher.head.float().eval()
        size = meta.preprocess.input_size
        bar = ctx.console.progress(len(mine), "teacher")
        for views, js in DataLoader(_ViewsOf(train, mine), batch_size=32, num_workers=ctx.workers):
            if views.shape[-1] != size:
                views = nn.functional.interpolate(views.float(), size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
                views = views.round_().clamp_(0, 255).to(torch.uint8)
            with torch.inference_mode():
                logits = head(extractor.forward(views))
            for row, j in zip(logits, js.tolist()):
                computed[mine[j]] = row
            bar.update(len(js))
        bar.close()
    if group.distributed:
        computed = group.gather_rows(computed)
    for (e, i), row in computed.items():
        out[e, i] = row
        if (e, i) in missing and group.writes_cache:
            cache.put(train.keys[i], f"e{e + 1}", row.numpy())
    cache.flush()
    facts = {"teacher": str(run_dir), "teacher_backbone": meta.backbone,
             "teacher_views_cached": epochs * n - len(todo), "teacher_views_computed": len(todo),
             "temperature": ctx.cfg.temperature, "alpha": ctx.cfg.alpha}
    return out, facts
