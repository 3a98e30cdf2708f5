"""An EXIF-rotated JPEG is read as displayed everywhere (training, evaluation, predict, the data
stages), and preprocess says when the annotation's size disagrees because of the rotation."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from frcnn.data.dataset import DetectionDataset
from frcnn.data.image_io import load_rgb
from frcnn.engine.inference import read_image
from tests.tiny_project import build_project, run_stage, tiny_params

W, H = 80, 48  # displayed: landscape


def _displayed() -> Image.Image:
    pixels = np.full((H, W, 3), 40, np.uint8)
    pixels[7:40, 9:50] = (250, 30, 30)  # the object, where the XML says (VOC's 1-based 10..50)
    return Image.fromarray(pixels)


def _save_rotated(path, image: Image.Image) -> None:
    """Stored sideways (portrait) with EXIF orientation 6: viewers rotate it 90 deg clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image.transpose(Image.Transpose.ROTATE_90).save(path, quality=100, exif=exif)


def test_load_rgb_and_read_image_give_the_displayed_frame(tmp_path):
    path = tmp_path / "phone.jpg"
    _save_rotated(path, _displayed())
    with Image.open(path) as raw:
        assert raw.size == (H, W)  # stored portrait
    shown = load_rgb(path)
    assert shown.size == (W, H)
    diff = np.abs(np.asarray(shown, np.int16) - np.asarray(_displayed(), np.int16))
    assert diff.mean() < 3  # JPEG noise only: the same picture, the right way up
    assert tuple(read_image(path).shape) == (3, H, W)


@pytest.fixture()
def rotated_project(tmp_path):
    root = build_project(tmp_path / "p")
    voc = root / "data/raw/VOCdevkit/SYNTH"
    image_id = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))[0]
    _save_rotated(voc / "JPEGImages" / f"{image_id}.jpg", _displayed())
    return root, voc, image_id


def _set_xml(voc, image_id, width, height, box):
    xml = voc / "Annotations" / f"{image_id}.xml"
    text = xml.read_text()
    text = re.sub(r"<width>\d+</width>", f"<width>{width}</width>", text)
    text = re.sub(r"<height>\d+</height>", f"<height>{height}</height>", text)
    objects = re.findall(r"<object>.*?</object>", text, flags=re.S)
    one = re.sub(r"<bndbox>.*?</bndbox>", "<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>"
                 "<ymax>{}</ymax></bndbox>".format(*box), objects[0], flags=re.S)
    text = text.replace("".join(objects), "") if len(objects) == 1 else text
    for obj in objects:
        text = text.replace(obj, "")
    xml.write_text(text.replace("</annotation>", one + "</annotation>"))


def _image_of(root, image_id):
    for split in ("trainval", "test"):
        coco = json.loads((root / f"data/processed/{split}.json").read_text())
        for im in coco["images"]:
            if im["file_name"].endswith(f"{image_id}.jpg"):
                return split, coco, im
    raise AssertionError(image_id)


def test_an_annotation_in_the_displayed_frame_is_kept_whole(rotated_project):
    root, voc, image_id = rotated_project
    _set_xml(voc, image_id, W, H, (10, 8, 50, 40))
    summary = run_stage("preprocess", root, progress=False)
    assert summary["size_mismatches"] == 0 and summary["boxes_clipped"] == 0
    split, coco, im = _image_of(root, image_id)
    assert (im["width"], im["height"]) == (W, H)
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    assert ann["bbox"] == [9.0, 7.0, 41.0, 33.0]  # 1-based inclusive -> 0-based xywh
    ds = DetectionDataset(root / f"data/processed/{split}.json", train=False, include_difficult=True)
    index = [i for i in range(len(ds)) if ds[i][1]["image_id"] == im["id"]][0]
    image, target = ds[index]
    assert tuple(image.shape) == (3, H, W)
    x1, y1, x2, y2 = target["boxes"][0].int().tolist()
    inside = image[:, y1 + 2: y2 - 2, x1 + 2: x2 - 2]
    assert inside[0].mean() > 0.8 and inside[1].mean() < 0.3  # the red object is inside its box


def test_an_annotation_of_the_stored_frame_is_reported_as_the_rotation(rotated_project):
    root, voc, image_id = rotated_project
    _set_xml(voc, image_id, H, W, (8, 10, 40, 50))  # drawn on the sideways pixels
    summary = run_stage("preprocess", root, progress=False)
    assert summary["size_mismatches"] == 1
    (issue,) = [i for i in summary["issues"] if i["kind"] == "size_mismatches"]
    assert f"{image_id}.xml" in issue["file"]
    assert f"XML size {H}x{W} differs from the image's {W}x{H} as displayed (EXIF orientation 6; " \
           f"stored {H}x{W}, which the XML matches" in issue["problem"]
