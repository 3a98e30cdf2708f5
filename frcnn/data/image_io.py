"""Reading images the way people see them: EXIF orientation applied.

A phone JPEG often stores its pixels sideways with an EXIF `Orientation` tag that tells viewers
to rotate it; annotation tools draw boxes on the rotated (displayed) image. Every place that reads
an image (training, evaluation, predict, the data stages and plots) goes through `load_rgb`, so
pixels and boxes share the displayed frame. A file without the tag reads exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

ORIENTATION_TAG = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # the orientations that swap width and height


def load_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as displayed (EXIF orientation applied), in RGB. Raises OSError."""
    with Image.open(path) as im:
        oriented = ImageOps.exif_transpose(im)
        return oriented.convert("RGB")


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored, 2-8 = mirrored/rotated), 1 without the tag."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(stored: tuple[int, int], exif_orientation: int) -> tuple[int, int]:
    """(width, height) as displayed, from the stored (width, height) and the orientation."""
    w, h = stored
    return (h, w) if exif_orientation in _TRANSPOSED else (w, h)


def iter_image_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given, folders expanded (sorted) to the image files they hold."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path
