"""TensorBoard: event files in RUN/tensorboard (`tensorboard --logdir runs` shows every run), written
by PyTorch's `SummaryWriter`: the scalars of each epoch, the confusion matrix and the top losses as
images, and the options with the final metrics in the HParams tab."""

from __future__ import annotations

from pathlib import Path

from ..registry import TrackerKind, register

FOLDER = "tensorboard"


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.writer = None
        self.params: dict[str, str] = {}

    def start(self, start) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from ...data.discover import OWN_MARKER

        self.writer = SummaryWriter(log_dir=str(self.run_dir / FOLDER))
        (self.run_dir / FOLDER / OWN_MARKER).touch()  # ours: a later run into the same folder replaces it
        self.params = dict(start.params)
        self.writer.add_text("transferkit/tags", "\n".join(f"    {k}: {v}" for k, v in start.tags.items()))

    def epochs(self, rows) -> None:
        for row in rows:
            for key, value in row.values.items():
                self.writer.add_scalar(scalar_name(key), value, row.step, walltime=row.time)
        self.writer.flush()

    def finish(self, end) -> None:
        import numpy as np
        from PIL import Image

        for title, path in end.images.items():
            if path.is_file():
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(title, pixels, dataformats="HWC")
        if end.metrics:
            hparams = {k: _typed(v) for k, v in {**self.params, **end.params}.items()}
            self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in end.metrics.items()
                                              if not k.startswith("f1/")}, run_name=".")
        self.writer.close()


def _typed(value: str) -> str | float | bool:
    """An option's text as HParams plots it best: a number or a flag where it is one."""
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


def scalar_name(key: str) -> str:
    """train_loss -> train/loss (TensorBoard groups scalars by the part before the slash)."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in ("train", "val") and rest else key


register(TrackerKind(name="tensorboard", summary="TensorBoard event files in RUN/tensorboard: scalars, plots, HParams",
                     module="tensorboard", extra="tensorboard", open=TensorBoardTracker))
