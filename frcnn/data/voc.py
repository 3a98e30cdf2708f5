"""PASCAL VOC annotation files: safe parsing and the 1-based -> 0-based box conversion.

VOC boxes are 1-based inclusive pixel indices (xmin, ymin, xmax, ymax): a box covering pixel
columns 0..9 is written xmin=1, xmax=10. Our convention is 0-based continuous coordinates, so
`voc_to_xyxy` maps it to (xmin - 1, ymin - 1, xmax, ymax) = (0, ., 10, .): width xmax - xmin + 1.

Parsing uses defusedxml (entity expansion and external entities are refused) and tolerates what
real-world VOC-format tools write (labelImg: `<path>`, no `<pose>`/`<segmented>`/`<truncated>`,
float coordinates, `<difficult>` missing -> 0). Numbers must be finite: `nan`, `inf` or `1e999`
in a box, `<size>` or a flag makes the file malformed, like any other text that is not a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from frcnn.errors import DataError

# VOC's class order: category ids 1..20 and model labels follow it.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class AnnotationError(DataError):
    """A malformed or unsafe annotation file; the message starts with its path."""


@dataclass(frozen=True)
class VocObject:
    """One `<object>`: its box exactly as written (1-based, possibly float) and its flags."""

    name: str
    bndbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (VOC, 1-based)
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"


@dataclass(frozen=True)
class VocAnnotation:
    """One annotation file; width/height are None when `<size>` is missing or zero."""

    path: Path
    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


def voc_to_xyxy(bndbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> our 0-based continuous (x1, y1, x2, y2)."""
    xmin, ymin, xmax, ymax = bndbox
    return xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)


def _text(node: Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(value: str) -> float:
    """`value` as a finite float; ValueError saying why for text, NaN, +-inf and `1e999`."""
    try:
        x = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(x):
        raise ValueError("is not a finite number")
    return x


def _flag(node: Element, tag: str, path: Path) -> bool:
    value = _text(node, tag)
    if value is None:
        return False  # labelImg and other tools leave flags out: VOC's default is 0
    try:
        return bool(int(_number(value)))
    except ValueError:
        raise AnnotationError(f"{path}: <{tag}> must be 0 or 1, got {value!r}") from None


def _size(root: Element, tag: str, path: Path) -> int | None:
    value = _text(root.find("size"), tag)
    if value is None:
        return None
    try:
        n = int(_number(value))
    except ValueError as exc:
        raise AnnotationError(f"{path}: <size><{tag}> {exc}: {value!r}") from None
    return n if n > 0 else None  # some tools write 0 when they did not know the size


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse a VOC annotation file; raises AnnotationError naming `path` if it is unusable."""
    path = Path(path)
    try:
        root = SafeET.parse(path).getroot()
    except DefusedXmlException as exc:
        raise AnnotationError(f"{path}: refused unsafe XML ({type(exc).__name__})") from None
    except ParseError as exc:
        raise AnnotationError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected <annotation>")

    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = _text(obj, "name")
        if name is None:
            raise AnnotationError(f"{path}: object {i} has no <name>")
        box = obj.find("bndbox")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _text(box, tag)
            if value is None:
                raise AnnotationError(f"{path}: object {i} ({name}) has no <bndbox><{tag}>")
            try:
                coords.append(_number(value))  # labelImg and CVAT may write floats
            except ValueError as exc:
                raise AnnotationError(
                    f"{path}: object {i} ({name}) <{tag}> {exc}: {value!r}") from None
        objects.append(VocObject(
            name=name, bndbox=tuple(coords),  # type: ignore[arg-type]
            difficult=_flag(obj, "difficult", path), truncated=_flag(obj, "truncated", path),
            pose=_text(obj, "pose") or "Unspecified"))
    return VocAnnotation(path=path, filename=_text(root, "filename"),
                         width=_size(root, "width", path), height=_size(root, "height", path),
                         objects=objects)
