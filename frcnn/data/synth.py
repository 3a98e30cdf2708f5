"""The embedded default dataset ("synth"): textured shapes on cluttered backgrounds, in VOC layout.

Generated deterministically from `data.synth.seed` (image i of a split depends only on the seed,
the split and i), written exactly as PASCAL VOC is (`JPEGImages/<id>.jpg`, `Annotations/<id>.xml`,
`ImageSets/Main/{train,val,trainval,test}.txt` and `<class>_<split>.txt`), so every later stage
runs the same code as for real VOC.

What it contains
- 6 classes by shape: disc (filled ellipse), ring (ellipse with a hole of 45-70 % of its radius),
  rectangle, triangle, star (5 points) and cross (plus sign). Each object gets one of five fills
  (solid, stripes, checker, dots, speckle noise) with a lighting gradient, independent of the
  class. Its main colour comes from its class's hue band for a fraction `class_colour` of objects
  (as real classes have typical colours) and is random otherwise; at `class_colour: 0` colour
  carries no class information and only the shape tells classes apart.
- Sizes log-uniform from `min_object_size` to `max_object_size` (default 32-160 px; the hard set
  named in params.yaml: 12 px to 90 % of the image side); aspect ratios up to 2.5:1 (1.6:1 for
  stars and triangles, which must stay recognisable); random rotation; 0 to `max_objects` objects
  per image (default 4, hard 8), 5 % of images have none. Objects are drawn in order, so later
  ones occlude earlier ones, and big ones may leave the image (truncation).
- Backgrounds: a colour gradient plus low-frequency noise, half of them with a faint stripe,
  checker or dot texture, up to `distractors` (default 2, hard 12) shapes that are not classes
  (irregular blobs, line segments, open arcs; half the blobs textured like objects, so texture
  alone does not mean "object"), a few thin lines over the objects, pixel noise, sometimes blur,
  JPEG quality 70-95.

Annotation rules (computed from the rendered masks, as a VOC annotator would see the image)
- The box is the bounding box of the *visible* pixels (VOC's rule), 1-based inclusive integers.
- visible fraction = visible pixels / full shape area (occlusion and image border together).
  Below 12 % or under 12 visible pixels the object is not annotated (it is just clutter now).
- `difficult=1` when the visible fraction is below 40 % (heavily occluded or cut off) or the
  visible box is tiny (sqrt(w * h) < 14 px); `truncated=1` when the shape crosses the image border.

Speed: 1250 images of 256 px take ~25 s on one core here (numpy + PIL, one RNG per image).
"""

from __future__ import annotations

import colorsys
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from frcnn.config import SynthConfig
from frcnn.progress import progress_bar

CLASSES = ("disc", "ring", "rectangle", "triangle", "star", "cross")
FOLDER = "SYNTH"  # data/raw/VOCdevkit/SYNTH, like VOCdevkit/VOC2007

DROP_VISIBLE = 0.12  # below this visible fraction an object is not annotated
DIFFICULT_VISIBLE = 0.4  # below this it is annotated difficult
DIFFICULT_SIZE = 14.0  # visible box sqrt(w*h) below this (px) -> difficult
EMPTY_P = 0.05  # fraction of images without objects


@dataclass(frozen=True)
class SynthObject:
    """One annotated object: VOC 1-based inclusive integer box and flags."""

    name: str
    bndbox: tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    visible: float  # visible fraction of the full shape


# ---------------------------------------------------------------- shapes (unit frame, ~[-1, 1]^2)


def _ellipse(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_polygons(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons making up the shape as (vertices (V, 2), fill 1 or 0 for a hole)."""
    if name == "disc":
        return [(_ellipse(), 1)]
    if name == "ring":
        return [(_ellipse(), 1), (_ellipse() * rng.uniform(0.45, 0.7), 0)]
    if name == "rectangle":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)]
    if name == "triangle":
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return [(np.stack([np.cos(t), np.sin(t) * 1.15 + 0.15], axis=1), 1)]
    if name == "star":
        t = np.linspace(-math.pi / 2, 1.5 * math.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]
    if name == "cross":
        w = rng.uniform(0.22, 0.38)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
        return [(np.array(pts, float), 1)]
    raise ValueError(f"unknown synth class {name!r}")


def _place(polys: list[tuple[np.ndarray, int]], cx: float, cy: float, sx: float, sy: float,
           angle: float) -> list[tuple[np.ndarray, int]]:
    """Scale by (sx, sy), rotate by `angle` radians, move to (cx, cy): image coordinates."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    return [((v * (sx, sy)) @ rot + (cx, cy), fill) for v, fill in polys]


def _area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ---------------------------------------------------------------- textures


PATTERNS = ("stripes", "checker", "dots", "noise")


def _texture(rng: np.random.Generator, h: int, w: int, c1: np.ndarray, c2: np.ndarray,
             kind: str | None = None) -> np.ndarray:
    """An (h, w, 3) float fill: solid, stripes, checker, dots or speckle, with a light gradient."""
    kind = kind or rng.choice(["solid", *PATTERNS])
    if kind == "solid":
        tex = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind == "noise":
        a = rng.random((h, w, 1), dtype=np.float32)
        tex = c1 * (1 - a) + c2 * a
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        th = rng.uniform(0, math.pi)
        u = xx * math.cos(th) + yy * math.sin(th)
        v = -xx * math.sin(th) + yy * math.cos(th)
        period = rng.uniform(3.0, 10.0)
        if kind == "stripes":
            m = (u / period) % 1.0 < rng.uniform(0.3, 0.7)
        elif kind == "checker":
            m = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        else:  # dots
            du, dv = (u % period) - period / 2, (v % period) - period / 2
            m = du * du + dv * dv < (period * rng.uniform(0.2, 0.4)) ** 2
        tex = np.where(m[..., None], c1, c2).astype(np.float32)
    # Shading: a linear brightness ramp so that fills are not perfectly flat.
    g = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-25, 25)
    return tex + g


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def class_colour(rng: np.random.Generator, class_index: int) -> np.ndarray:
    """A saturated colour whose hue lies in the class's band: class k owns hues k/6 +- 1/20.

    Like real classes (sky is blue, grass green), a class then has a typical colour without
    colour deciding it: bands leave gaps, and backgrounds and distractors take any colour.
    """
    hue = (class_index + rng.uniform(-0.3, 0.3)) / len(CLASSES)
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
    return np.array(rgb, np.float32) * 255


def _luma(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114], np.float32))


# ---------------------------------------------------------------- background and clutter


def _background(rng: np.random.Generator, size: int, textured_p: float) -> np.ndarray:
    """(size, size, 3) float: gradient + low-frequency noise + a faint texture (`textured_p`)."""
    a, b = _random_colour(rng), _random_colour(rng)
    th = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = np.clip(0.5 + (ramp[None, :] - 0.5) * math.cos(th) + (ramp[:, None] - 0.5) * math.sin(th),
                0, 1)[..., None]
    img = a * (1 - t) + b * t
    cells = int(rng.integers(3, 10))
    low = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    low = np.asarray(low.resize((size, size), Image.BILINEAR), np.float32) - 128.0
    img = img + low * rng.uniform(0.1, 0.5)
    if rng.random() < textured_p:
        c = _random_colour(rng)
        kind = rng.choice(["stripes", "checker", "dots"])
        tex = _texture(rng, size, size, c, img.mean(axis=(0, 1)), kind=kind)
        alpha = rng.uniform(0.1, 0.3)
        img = img * (1 - alpha) + tex * alpha
    return img


def _draw_distractors(rng: np.random.Generator, img: Image.Image, n: int, thin: bool) -> None:
    """Non-class clutter drawn straight onto `img`: irregular blobs, lines, open arcs."""
    draw = ImageDraw.Draw(img)
    s = img.width
    for _ in range(n):
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        kind = "line" if thin else rng.choice(["blob", "line", "arc"], p=[0.45, 0.35, 0.2])
        if kind == "line":
            p = rng.uniform(-0.1 * s, 1.1 * s, 4)
            draw.line([float(x) for x in p], fill=colour,
                      width=1 if thin else int(rng.integers(1, 5)))
        elif kind == "arc":
            r = rng.uniform(0.05, 0.3) * s
            cx, cy = rng.uniform(0, s, 2)
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200),
                     fill=colour, width=int(rng.integers(2, 6)))
        else:
            k = int(rng.integers(6, 12))
            t = np.sort(rng.uniform(0, 2 * math.pi, k))
            r = rng.uniform(0.03, 0.2) * s * rng.uniform(0.55, 1.0, k)
            cx, cy = rng.uniform(0, s, 2)
            pts = [tuple(p) for p in np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).tolist()]
            if rng.random() < 0.5:
                draw.polygon(pts, fill=colour)
            else:  # textured like the objects, so "textured" does not mean "object"
                x0, y0 = (max(0, int(min(p[i] for p in pts))) for i in (0, 1))
                x1, y1 = (min(s, int(max(p[i] for p in pts)) + 1) for i in (0, 1))
                if x1 <= x0 or y1 <= y0:
                    continue
                mask = Image.new("L", (x1 - x0, y1 - y0), 0)
                ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
                tex = _texture(rng, y1 - y0, x1 - x0, _random_colour(rng), _random_colour(rng))
                img.paste(Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8)), (x0, y0), mask)


# ---------------------------------------------------------------- one image


def render_image(rng: np.random.Generator, size: int, cfg: SynthConfig | None = None
                 ) -> tuple[np.ndarray, list[SynthObject]]:
    """One image (size, size, 3) uint8 and its annotated objects, drawn from `rng`.

    `cfg` supplies the difficulty knobs (object sizes and counts, clutter, textures); its
    counts and seed are not used here.
    """
    cfg = cfg or SynthConfig()
    bg = Image.fromarray(np.clip(_background(rng, size, cfg.textured_background), 0, 255)
                         .astype(np.uint8))
    _draw_distractors(rng, bg, int(rng.integers(cfg.distractors // 4, cfg.distractors + 1)),
                      thin=False)
    img = np.asarray(bg, np.float32).copy()

    n = 0 if rng.random() < EMPTY_P else 1 + int(rng.binomial(cfg.max_objects - 1, 0.4))
    sizes = np.exp(rng.uniform(math.log(cfg.min_object_size), math.log(min(cfg.max_object_size, 0.9 * size)), n))
    order = np.argsort(-sizes)  # mostly big first, so small objects stay visible ...
    for i in range(n - 1):  # ... but not always: some small ones get hidden behind big ones
        if rng.random() < 0.25:
            order[i], order[i + 1] = order[i + 1], order[i]

    owner = np.full((size, size), -1, np.int16)  # index of the object owning each pixel
    placed: list[tuple[str, float, bool]] = []  # (class, full area, crosses the border)
    for k, idx in enumerate(order):
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        max_aspect = 1.6 if name in ("star", "triangle") else 2.5
        aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
        half = sizes[idx] / 2
        sx, sy = half * math.sqrt(aspect), half / math.sqrt(aspect)
        margin = min(0.5 * half, 0.3 * size)  # big objects may still cross the border
        cx, cy = rng.uniform(margin, size - margin, 2)
        polys = _place(_shape_polygons(name, rng), cx, cy, sx, sy, rng.uniform(0, 2 * math.pi))

        mask_img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask_img)
        for v, fill in polys:
            draw.polygon([tuple(p) for p in v.tolist()], fill=fill)
        mask = np.asarray(mask_img, bool)
        full_area = sum(_area(v) if fill else -_area(v) for v, fill in polys)
        outer = polys[0][0]
        crosses = bool((outer < 0).any() or (outer > size).any())
        placed.append((name, full_area, crosses))
        if not mask.any():
            continue

        _paint(rng, img, owner, mask, k, name, cfg)

    top = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _draw_distractors(rng, top, int(rng.integers(0, 3)) if cfg.distractors else 0, thin=True)
    img = np.asarray(top, np.float32) + rng.normal(0, rng.uniform(2, 8), (size, size, 1))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))

    return np.asarray(out), _annotate(placed, owner)


def _paint(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray, mask: np.ndarray, k: int,
           name: str, cfg: SynthConfig) -> None:
    """Fill object `k`'s pixels (`mask`) of `img` with its colours and texture; mark them its own
    in `owner` (objects painted later cover earlier ones)."""
    # Texture only the shape's bounding region: far cheaper than the whole image.
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    region = mask[y0:y1, x0:x1]
    bg_luma = _luma(img[y0:y1, x0:x1][region].mean(axis=0))
    # Only a non-zero class_colour draws the extra number: at 0 the set is the shape-only one.
    typical = cfg.class_colour > 0 and rng.random() < cfg.class_colour
    for _ in range(6):  # keep the object visible against its surroundings: 5 redraws at most
        c1 = class_colour(rng, CLASSES.index(name)) if typical else _random_colour(rng)
        if abs(_luma(c1) - bg_luma) > 40:
            break
    c2 = c1 * rng.uniform(0.3, 0.8) + _random_colour(rng) * rng.uniform(0.0, 0.4)
    kind = str(rng.choice(PATTERNS)) if rng.random() < cfg.patterned_fill else "solid"
    tex = _texture(rng, y1 - y0, x1 - x0, c1, c2, kind=kind)
    img[y0:y1, x0:x1][region] = tex[region]
    owner[y0:y1, x0:x1][region] = k


def _annotate(placed: list[tuple[str, float, bool]], owner: np.ndarray) -> list[SynthObject]:
    """The annotations of the placed objects from the pixels each still owns: its box, visible
    fraction, difficult and truncated flags; mostly hidden objects are left out."""
    objects = []
    for k, (name, full_area, crosses) in enumerate(placed):
        vis = owner == k
        count = int(vis.sum())
        visible = min(1.0, count / max(full_area, 1.0))
        if count < 12 or visible < DROP_VISIBLE:
            continue
        rows, cols = np.nonzero(vis.any(axis=1))[0], np.nonzero(vis.any(axis=0))[0]
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
        tiny = math.sqrt((x1 - x0 + 1) * (y1 - y0 + 1)) < DIFFICULT_SIZE
        objects.append(SynthObject(
            name=name, bndbox=(x0 + 1, y0 + 1, x1 + 1, y1 + 1),  # VOC: 1-based inclusive
            difficult=visible < DIFFICULT_VISIBLE or tiny, truncated=crosses,
            visible=round(visible, 3)))
    return objects


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one image: independent of generation order (and of other images)."""
    return np.random.default_rng([seed, 0 if split == "trainval" else 1, index])


# ---------------------------------------------------------------- VOC files


def voc_xml(image_id: str, size: int, objects: list[SynthObject]) -> str:
    """A VOC annotation file, laid out as the VOC2007 ones are."""
    lines = ["<annotation>", f"\t<folder>{FOLDER}</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source>", "\t\t<database>frcnn synthetic shapes</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{size}</width>", f"\t\t<height>{size}</height>",
             "\t\t<depth>3</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for o in objects:
        x0, y0, x1, y1 = o.bndbox
        lines += ["\t<object>", f"\t\t<name>{escape(o.name)}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{int(o.truncated)}</truncated>",
                  f"\t\t<difficult>{int(o.difficult)}</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0}</xmin>", f"\t\t\t<ymin>{y0}</ymin>",
                  f"\t\t\t<xmax>{x1}</xmax>", f"\t\t\t<ymax>{y1}</ymax>", "\t\t</bndbox>",
                  "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _split_ids(cfg: SynthConfig) -> Iterator[tuple[str, int, str]]:
    """(split, index within split, VOC-style id) for every image; ids are 1-based, 6 digits."""
    for i in range(cfg.num_trainval):
        yield "trainval", i, f"{i + 1:06d}"
    for i in range(cfg.num_test):
        yield "test", i, f"{cfg.num_trainval + i + 1:06d}"


def generate_synth(root: str | Path, cfg: SynthConfig, progress: bool = True) -> dict[str, float]:
    """Write the dataset into `root` (a VOC root like VOCdevkit/SYNTH); returns counts.

    `root` should be a fresh (staging) folder: the download stage renames it into place.
    """
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"trainval": [], "test": []}
    present: dict[str, dict[str, int]] = {c: {} for c in CLASSES}  # class -> id -> 1/0 (VOC lists)
    counts = {"images": 0, "objects": 0, "difficult": 0, "truncated": 0, "empty_images": 0}
    start = time.perf_counter()
    total = cfg.num_trainval + cfg.num_test
    for split, index, image_id in progress_bar(_split_ids(cfg), enabled=progress, total=total,
                                               desc="synth", unit="img"):
        pixels, objects = render_image(image_rng(cfg.seed, split, index), cfg.image_size, cfg)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg",
                                     quality=int(70 + (index * 7919) % 26))
        (root / "Annotations" / f"{image_id}.xml").write_text(
            voc_xml(image_id, cfg.image_size, objects))
        ids[split].append(image_id)
        for o in objects:
            # VOC's per-class lists: 1 = present, 0 = only difficult instances, -1 = absent.
            present[o.name][image_id] = max(present[o.name].get(image_id, 0), 0 if o.difficult else 1)
        counts["images"] += 1
        counts["objects"] += len(objects)
        counts["difficult"] += sum(o.difficult for o in objects)
        counts["truncated"] += sum(o.truncated for o in objects)
        counts["empty_images"] += not objects

    # VOC's own train/val halves of trainval (alternating), besides trainval and test.
    lists = {"trainval": ids["trainval"], "test": ids["test"],
             "train": ids["trainval"][0::2], "val": ids["trainval"][1::2]}
    main = root / "ImageSets" / "Main"
    for split, split_ids in lists.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for c in CLASSES:
            (main / f"{c}_{split}.txt").write_text(
                "".join(f"{i} {present[c].get(i, -1):2d}\n" for i in split_ids))
    counts["seconds"] = round(time.perf_counter() - start, 1)
    return counts
