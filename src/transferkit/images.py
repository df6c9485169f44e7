"""Decoding one image file into correct 8-bit RGB, recognised by content rather than extension."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# Register the decoders of every format we accept (Image.open's lazy init covers only a few).
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin  # noqa: F401
from PIL import PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401

from .errors import ImageDecodeError

# Formats we accept, by content. The JPEG decoder also opens MPO, the multi-picture JPEG of cameras.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Background that transparent pixels are composited onto.
BACKGROUND = (255, 255, 255)


def load_rgb(path: str | Path, min_short_side: int | None = None) -> Image.Image:
    """Open `path` as an 8-bit RGB image, EXIF orientation applied.

    Args:
        path: the image file; its content decides the format, not its extension.
        min_short_side: when given, JPEGs may be decoded at a reduced scale (draft mode)
            as long as the short side stays at least this large.

    Raises:
        ImageDecodeError: empty, not an image, truncated/corrupt, or too large (decompression bomb).
    """
    p = str(path)
    try:
        if Path(p).stat().st_size == 0:
            raise ImageDecodeError(p, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow warns before refusing at 2x the limit; refuse at the limit itself.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as im:
                if min_short_side and im.format in ("JPEG", "MPO"):
                    _draft(im, min_short_side)
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb8(im)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(p, "file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(p, "refused: too many pixels (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(p, f"truncated or corrupt image ({_short(exc)})") from None


def _draft(im: Image.Image, min_short_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the short side stays >= min_short_side."""
    w, h = im.size
    scale = min_short_side / min(w, h)
    if scale <= 0.5:
        im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit scaled down, alpha composited, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode != "F" and (mode.startswith("I;16") or arr.max(initial=0) > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


# -- the evaluation view, torch-free (shared by training, prediction and ONNX Runtime prediction) --

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample(interpolation: str) -> Image.Resampling:
    return _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)


def resize_short(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the short side is `size` (the long side keeps the aspect ratio)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img if new == (w, h) else img.resize(new, resample(interpolation))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def eval_view(img: Image.Image, resize_size: int, input_size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize the short side to `resize_size`, center crop `input_size` x `input_size`."""
    return center_crop(resize_short(img, resize_size, interpolation), input_size)


def normalized_array(path: str | Path, resize_size: int, input_size: int, interpolation: str,
                     mean, std) -> np.ndarray:
    """One image file as a float32 (3, S, S) array: eval view, scaled to [0, 1], (x - mean) / std,
    as every transferkit model expects (and export metadata describes)."""
    img = eval_view(load_rgb(path, min_short_side=resize_size), resize_size, input_size, interpolation)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
