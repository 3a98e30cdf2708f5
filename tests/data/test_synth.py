"""The embedded dataset: exact VOC layout, determinism, and a task that is not a toy."""

import colorsys
import math

import numpy as np
from PIL import Image

from frcnn.config import SynthConfig
from frcnn.data.synth import (
    CLASSES,
    DIFFICULT_SIZE,
    DIFFICULT_VISIBLE,
    class_colour,
    generate_synth,
    image_rng,
    render_image,
)
from frcnn.data.voc import parse_voc_xml

SMALL = SynthConfig(num_trainval=6, num_test=3, image_size=96, seed=7)


def test_writes_exact_voc_layout(tmp_path):
    counts = generate_synth(tmp_path, SMALL, progress=False)
    assert counts["images"] == 9
    main = tmp_path / "ImageSets" / "Main"
    trainval = main.joinpath("trainval.txt").read_text().split()
    test = main.joinpath("test.txt").read_text().split()
    assert trainval == [f"{i:06d}" for i in range(1, 7)] and test == ["000007", "000008", "000009"]
    assert sorted(main.joinpath("train.txt").read_text().split()
                  + main.joinpath("val.txt").read_text().split()) == trainval
    for c in CLASSES:  # VOC's per-class lists: "<id> <1|0|-1>"
        rows = [line.split() for line in main.joinpath(f"{c}_test.txt").read_text().splitlines()]
        assert [r[0] for r in rows] == test and {r[1] for r in rows} <= {"1", "0", "-1"}
    for image_id in trainval + test:
        ann = parse_voc_xml(tmp_path / "Annotations" / f"{image_id}.xml")
        with Image.open(tmp_path / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.size == (96, 96) and im.mode == "RGB" and im.format == "JPEG"
        assert (ann.filename, ann.width, ann.height) == (f"{image_id}.jpg", 96, 96)
        for o in ann.objects:
            xmin, ymin, xmax, ymax = o.bndbox
            assert o.name in CLASSES
            assert all(float(v).is_integer() for v in o.bndbox)  # VOC: integer pixel indices
            assert 1 <= xmin <= xmax <= 96 and 1 <= ymin <= ymax <= 96  # 1-based inclusive
    xml = (tmp_path / "Annotations" / "000001.xml").read_text()
    for tag in ("<folder>SYNTH</folder>", "<depth>3</depth>", "<segmented>0</segmented>"):
        assert tag in xml


def test_same_seed_same_bytes_other_seed_different(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_synth(a, SMALL, progress=False)
    generate_synth(b, SMALL, progress=False)
    generate_synth(c, SynthConfig(num_trainval=6, num_test=3, image_size=96, seed=8), progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "JPEGImages/000001.jpg").read_bytes() != (c / "JPEGImages/000001.jpg").read_bytes()


def test_image_depends_only_on_seed_split_and_index():
    x1, o1 = render_image(image_rng(0, "test", 5), 64)
    render_image(image_rng(0, "test", 4), 64)  # drawing another image in between changes nothing
    x2, o2 = render_image(image_rng(0, "test", 5), 64)
    assert np.array_equal(x1, x2) and o1 == o2


# the hard set named in params.yaml's comments (the default until 2026-11-25)
HARD = SynthConfig(min_object_size=12.0, max_object_size=230.0, max_objects=8, distractors=12)


def test_a_real_detection_task():
    """Over 120 images of the hard set: all classes, small to large objects, varied shapes,
    occlusion, difficult and truncated objects, some empty images, annotations following the
    documented rules."""
    size = 128
    objects, empty = [], 0
    for i in range(120):
        _, objs = render_image(image_rng(1, "trainval", i), size, HARD)
        objects += objs
        empty += not objs
    assert {o.name for o in objects} == set(CLASSES) and len(CLASSES) >= 5
    assert 1 <= empty <= 20
    sides = [math.sqrt((o.bndbox[2] - o.bndbox[0] + 1) * (o.bndbox[3] - o.bndbox[1] + 1))
             for o in objects]
    assert min(sides) < 16 and max(sides) > 0.6 * size
    aspects = [(o.bndbox[2] - o.bndbox[0] + 1) / (o.bndbox[3] - o.bndbox[1] + 1) for o in objects]
    assert min(aspects) < 0.6 and max(aspects) > 1.7
    assert any(o.visible < 0.9 and not o.truncated for o in objects)  # occluded by others
    assert 0.02 < np.mean([o.difficult for o in objects]) < 0.25
    assert 0.05 < np.mean([o.truncated for o in objects]) < 0.6
    for o, side in zip(objects, sides):
        assert o.difficult == (o.visible < DIFFICULT_VISIBLE or side < DIFFICULT_SIZE)


def _objects(cfg: SynthConfig, n: int = 60, size: int = 128):
    out = []
    for i in range(n):
        out.append(render_image(image_rng(3, "trainval", i), size, cfg))
    return out


def test_difficulty_knobs_change_what_is_drawn():
    """min_object_size, max_objects, distractors and fills do what params.yaml says, compared
    with the hard set's."""
    easy = SynthConfig(min_object_size=32, max_object_size=48, max_objects=3, distractors=0,
                       patterned_fill=0.0, textured_background=0.0)
    rendered = _objects(easy)
    objects = [o for _, objs in rendered for o in objs]
    assert max(len(objs) for _, objs in rendered) <= 3
    # nominal diameter <= 48 px: a rectangle stretched 2.5:1 and rotated has a diagonal of at most
    # 48 * sqrt(2.5 + 1 / 2.5) = 81.7 px; the hard set draws objects up to 90 % of the image
    assert max(max(o.bndbox[2] - o.bndbox[0], o.bndbox[3] - o.bndbox[1]) + 1 for o in objects) <= 83
    # Nominal size >= 32 px; the visible box of an untruncated, unoccluded shape is not far below.
    whole = [o for o in objects if o.visible > 0.99 and not o.truncated]
    assert whole and min(math.sqrt((o.bndbox[2] - o.bndbox[0] + 1) * (o.bndbox[3] - o.bndbox[1] + 1))
                         for o in whole) > 14
    hard_sides = [math.sqrt((o.bndbox[2] - o.bndbox[0] + 1) * (o.bndbox[3] - o.bndbox[1] + 1))
                  for _, objs in _objects(HARD) for o in objs]
    assert min(hard_sides) < 14  # the hard set keeps tiny objects

    # Without distractors, patterns or textured backgrounds, pixels outside the boxes are smooth:
    # a clutter-free image has far less high-frequency energy there than the default's.
    def background_roughness(cfg: SynthConfig) -> float:
        values = []
        for x, objs in _objects(cfg, n=20):
            keep = np.ones(x.shape[:2], bool)
            for o in objs:
                x0, y0, x1, y1 = o.bndbox
                keep[max(0, y0 - 3):y1 + 2, max(0, x0 - 3):x1 + 2] = False
            grad = np.abs(np.diff(x.astype(np.float32).mean(axis=2), axis=1))
            values.append(grad[keep[:, 1:]].mean())
        return float(np.mean(values))

    assert background_roughness(easy) < 0.7 * background_roughness(HARD)


def _nearest_band(rgb: np.ndarray) -> int:
    """Index of the class hue band nearest to the colour's hue."""
    hue = colorsys.rgb_to_hsv(*(rgb / 255.0))[0] * len(CLASSES)
    return int(np.argmin([min(abs(hue - k), len(CLASSES) - abs(hue - k)) for k in range(len(CLASSES))]))


def test_class_colour_gives_classes_their_hue_band():
    """class_colour=1 paints each object in its class's band; 0 leaves colour uninformative."""
    rng = np.random.default_rng(0)
    for k in range(len(CLASSES)):
        assert all(_nearest_band(class_colour(rng, k)) == k for _ in range(50))

    def hue_matches_class(fraction: float) -> float:
        cfg = SynthConfig(class_colour=fraction, patterned_fill=0.0, distractors=0,
                          textured_background=0.0, min_object_size=40, max_objects=3)
        hits = []
        for x, objs in _objects(cfg, n=150):
            for o in objs:
                # the box centre lies on the shape for these classes when nothing covers it
                if o.name in ("disc", "rectangle", "star", "cross") and o.visible > 0.99:
                    x0, y0, x1, y1 = (v - 1 for v in o.bndbox)
                    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
                    centre = np.median(x[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3), axis=0)
                    hits.append(_nearest_band(centre) == CLASSES.index(o.name))
        assert len(hits) > 50
        return float(np.mean(hits))

    assert hue_matches_class(1.0) > 0.8
    assert hue_matches_class(0.0) < 0.4  # chance is 1/6
