"""How images are prepared for a backbone. Travels with the weights; no torch here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for a backbone (from its weights' config)."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize_size(self) -> int:
        """Short side before the center crop (timm's rule: floor(input_size / crop_pct))."""
        return int(self.input_size / self.crop_pct)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = self.resize_size
        d["rule"] = "resize short side to resize_size, center crop input_size, scale to [0,1], (x-mean)/std"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """From a saved bundle or an exported model's metadata, every field checked: a crafted
        file cannot ask for a 100,000-pixel input (240 GB) or divide by a zero std."""
        from ..errors import UserError

        try:
            pre = cls(int(d["input_size"]), float(d["crop_pct"]), str(d["interpolation"]),
                      tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"preprocessing settings are damaged ({type(exc).__name__}: {exc})") from None
        problems = []
        if not MIN_SIZE <= pre.input_size <= MAX_SIZE:
            problems.append(f"input_size {pre.input_size} is outside {MIN_SIZE}-{MAX_SIZE}")
        if not 0.25 <= pre.crop_pct <= 1.0:
            problems.append(f"crop_pct {pre.crop_pct} is outside 0.25-1")
        if pre.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {pre.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if len(pre.mean) != 3 or len(pre.std) != 3 or not all(math.isfinite(v) for v in pre.mean + pre.std) \
                or min(pre.std) <= 0:
            problems.append("mean and std must be 3 finite numbers each, std > 0")
        if problems:
            raise UserError("preprocessing settings are invalid: " + "; ".join(problems))
        return pre


MIN_SIZE, MAX_SIZE = 16, 1024  # input sides a model may ask for
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
