"""Decoding one image (a file, its bytes, or a PIL image) into correct 8-bit RGB, recognised by
content rather than extension, and the evaluation view every model sees. No torch here."""

from __future__ import annotations

import io
import math
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# Register the decoders of every format we accept (Image.open's lazy init covers only a few).
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin  # noqa: F401
from PIL import PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401

from ..errors import ImageDecodeError, describe_os_error

# Formats we accept, by content. The JPEG decoder also opens MPO, the multi-picture JPEG of cameras.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Background that transparent pixels are composited onto.
BACKGROUND = (255, 255, 255)

# A change to what an image becomes (decoding, resizing) bumps `cache.keys.DECODER_VERSION`: the
# keys of everything cached from decoded images include it.


def source_name(source, default: str = "<image bytes>") -> str:
    """How an image source is named in messages: its path, or `default` for bytes and PIL images."""
    return str(source) if isinstance(source, (str, Path)) else default


def load_rgb(source: str | Path | bytes | Image.Image, min_short_side: int | None = None,
             name: str | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, EXIF orientation applied.

    Args:
        source: a file path, the file's bytes, or a PIL image; the content decides the format,
            not a file extension.
        min_short_side: when given, JPEGs may be decoded at a reduced scale (draft mode)
            as long as the short side stays at least this large.
        name: how the image is named in errors (default: its path, or "<image bytes>").

    Raises:
        ImageDecodeError: empty, not an image, truncated/corrupt, or too large (decompression bomb).
    """
    p = name or source_name(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, p)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageDecodeError(p, "empty file (0 bytes)")
            opened = io.BytesIO(bytes(source))
        else:
            info = Path(source).stat()
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block the read, or never end
                raise ImageDecodeError(p, "not a regular file (a pipe, a device or a socket)")
            if info.st_size == 0:
                raise ImageDecodeError(p, "empty file (0 bytes)")
            opened = str(source)
        with warnings.catch_warnings():
            # Pillow's warnings about a damaged file ("Tag data larger than file", ...) are not the
            # user's concern: the image decodes or is skipped with one reason. It warns before
            # refusing at 2x the pixel limit; refuse at the limit itself.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened, formats=FORMATS) as im:
                if min_short_side and im.format in ("JPEG", "MPO"):
                    _draft(im, min_short_side)
                im.load()
                return to_rgb8(_upright(im))
    except ImageDecodeError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise ImageDecodeError(p, describe_os_error(exc), cacheable=False) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(p, "refused: too many pixels (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(p, f"truncated or corrupt image ({_short(exc)})") from None
    except (MemoryError, RecursionError):
        raise ImageDecodeError(p, "refused: decoding it needs more memory than there is") from None
    except Exception as exc:  # noqa: BLE001 - a crafted file makes Pillow's plugins raise anything
        raise ImageDecodeError(p, f"corrupt image ({type(exc).__name__}: {_short(exc)})") from None


def _upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation says; as it is when the EXIF block itself is damaged
    (a text value under a numeric tag, a truncated IFD): the pixels are still the photo."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - struct.error, TypeError, KeyError... from a damaged EXIF block
        return im


def _from_pil(im: Image.Image, name: str) -> Image.Image:
    """A PIL image given by the caller (already decoded): the same checks and conversion."""
    if im.width * im.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
        raise ImageDecodeError(name, "refused: too many pixels (possible decompression bomb)")
    try:
        im.load()
        return to_rgb8(_upright(im))
    except Exception as exc:  # noqa: BLE001 - as load_rgb: any failure of a damaged image is one reason
        raise ImageDecodeError(name, f"unusable image ({type(exc).__name__}: {_short(exc)})") from None


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


def eval_array(source, resize_size: int, input_size: int, interpolation: str, name: str | None = None) -> np.ndarray:
    """One image as the uint8 (S, S, 3) evaluation view (what `normalized_array` scales)."""
    img = load_rgb(source, min_short_side=resize_size, name=name)
    return np.asarray(eval_view(img, resize_size, input_size, interpolation), dtype=np.uint8)


def normalized_array(source, resize_size: int, input_size: int, interpolation: str, mean, std,
                     name: str | None = None) -> np.ndarray:
    """One image (path, bytes or PIL) as a float32 (3, S, S) array: eval view, scaled to [0, 1],
    (x - mean) / std, as every transferkit model expects (and export metadata describes)."""
    img = eval_view(load_rgb(source, min_short_side=resize_size, name=name), resize_size, input_size, interpolation)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def typical_short_side(paths: list[str], sample: int = 32) -> int | None:
    """The median short side of up to `sample` images spread over `paths`, from their headers
    (nothing is decoded); None when none can be read."""
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(np.median(sides)) if sides else None
