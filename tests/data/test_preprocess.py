"""VOC -> COCO conversion: the JSON contract, and every kind of bad annotation reported by name."""

import json
from pathlib import Path

import pytest
from data_helpers import make_voc_root, voc_xml, write_manifest

from frcnn.config import config_from_dict
from frcnn.data.voc import VOC_CLASSES
from frcnn.errors import DataError
from frcnn.pipeline import preprocess

ROOT = "VOCdevkit/MINE"


def run(tmp_path: Path, overrides: dict | None = None):
    cfg = config_from_dict({}, overrides or {})
    return preprocess.run(cfg, raw_dir=tmp_path / "raw", out_dir=tmp_path / "processed", summary_json=tmp_path / "reports" / 'data_summary.json', summary_png=tmp_path / "reports" / 'data_summary.png', preview_png=tmp_path / "reports" / 'data_preview.png', progress=False)


def clean_tree(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_voc_root(raw / ROOT, {
        "a": (50, 40, [("dog", (1, 1, 10, 20), 0), ("cat", (5, 6, 50, 40), 1)]),
        "b": (30, 60, [("cat", (2, 3, 4, 5), 0)]),
        "c": (20, 20, []),
        "t": (40, 40, [("dog", (11, 11, 30, 30), 0)]),
    }, {"trainval": ["a", "b", "c"], "test": ["t"]})
    write_manifest(raw, [ROOT])
    return raw


def load(tmp_path: Path, split: str) -> dict:
    return json.loads((tmp_path / "processed" / f"{split}.json").read_text())


def test_coco_contract(tmp_path):
    clean_tree(tmp_path)
    summary = run(tmp_path)
    coco = load(tmp_path, "trainval")
    assert coco["categories"] == [{"id": 1, "name": "cat", "supercategory": "none"},
                                  {"id": 2, "name": "dog", "supercategory": "none"}]  # sorted
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    for im in coco["images"]:  # relative to the JSON's folder, and it resolves
        assert im["file_name"].startswith("../raw/") and not Path(im["file_name"]).is_absolute()
        assert (tmp_path / "processed" / im["file_name"]).is_file()
    assert (coco["images"][1]["width"], coco["images"][1]["height"]) == (30, 60)
    a1, a2, a3 = coco["annotations"]
    # VOC (1, 1, 10, 20) -> x=0, y=0, w=10, h=20 in our 0-based convention.
    assert a1 == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 20.0],
                  "area": 200.0, "iscrowd": 0, "difficult": 0, "truncated": 0}
    assert (a2["bbox"], a2["difficult"], a2["iscrowd"]) == ([4.0, 5.0, 46.0, 35.0], 1, 1)
    assert a3["image_id"] == 2 and a3["bbox"] == [1.0, 2.0, 3.0, 3.0]
    assert [im["voc_id"] for im in load(tmp_path, "test")["images"]] == ["t"]

    s = summary["splits"]["trainval"]
    assert (s["images_listed"], s["images"], s["objects"], s["difficult"]) == (3, 3, 3, 1)
    assert s["images_without_objects"] == 1
    assert s["per_class"] == {"cat": {"objects": 2, "difficult": 1}, "dog": {"objects": 1, "difficult": 0}}
    assert summary["issues"] == [] and summary["images_skipped"] == 0
    on_disk = json.loads((tmp_path / "reports" / "data_summary.json").read_text())
    assert on_disk["objects"] == 4 and on_disk["classes"] == ["cat", "dog"]
    for png in ("data_summary.png", "data_preview.png"):
        assert (tmp_path / "reports" / png).read_bytes()[:4] == b"\x89PNG"


def test_voc_class_order_and_configured_classes(tmp_path):
    raw = clean_tree(tmp_path)
    write_manifest(raw, [ROOT], class_order="voc")
    run(tmp_path)
    cats = load(tmp_path, "test")["categories"]
    assert [c["name"] for c in cats] == list(VOC_CLASSES) and cats[0]["id"] == 1
    assert load(tmp_path, "test")["annotations"][0]["category_id"] == VOC_CLASSES.index("dog") + 1
    run(tmp_path, {"data.classes": ["dog", "cat"]})
    assert [c["name"] for c in load(tmp_path, "test")["categories"]] == ["dog", "cat"]


def bad_tree(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_voc_root(raw / ROOT, {
        "clip": (50, 40, [("dog", (-4, 1, 60, 20), 0)]),       # partly outside -> clipped
        "flip": (50, 40, [("dog", (30, 5, 10, 20), 0), ("cat", (1, 1, 5, 5), 0)]),  # x2 < x1
        "away": (50, 40, [("dog", (70, 70, 90, 90), 0)]),      # entirely outside -> dropped
        "trunc": (50, 40, [("dog", (1, 1, 5, 5), 0)]),         # JPEG cut short below
        "badxml": (50, 40, []),                                 # XML broken below
        "size": (50, 40, [("cat", (1, 1, 5, 5), 0)]),          # XML size wrong below
        "noimg": (50, 40, [("cat", (1, 1, 5, 5), 0)]),         # JPEG deleted below
        "float": (50, 40, []),                                  # labelImg, float coords
        "t": (40, 40, [("dog", (11, 11, 30, 30), 0)]),
    }, {"trainval": ["clip", "flip", "away", "trunc", "badxml", "size", "noimg", "float"],
        "test": ["t"]})
    jpg = raw / ROOT / "JPEGImages"
    data = (jpg / "trunc.jpg").read_bytes()
    (jpg / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (jpg / "noimg.jpg").unlink()
    ann = raw / ROOT / "Annotations"
    (ann / "badxml.xml").write_text("<annotation><object><name>dog</name>")
    (ann / "size.xml").write_text(voc_xml("size.jpg", 64, 48, [("cat", (1, 1, 5, 5), 0)]))
    (ann / "float.xml").write_text(
        "<annotation><filename>float.jpg</filename><path>C:/x/float.jpg</path><size><width>50"
        "</width><height>40</height></size><object><name>cat</name><bndbox><xmin>1.5</xmin>"
        "<ymin>2.5</ymin><xmax>10.5</xmax><ymax>12.0</ymax></bndbox></object></annotation>")
    write_manifest(raw, [ROOT])
    return raw


def test_bad_annotations_are_counted_and_named(tmp_path):
    bad_tree(tmp_path)
    summary = run(tmp_path)
    s = summary["splits"]["trainval"]
    assert (s["images_listed"], s["images"]) == (8, 5)  # trunc, badxml, noimg skipped
    assert summary["images_skipped"] == 3
    assert summary["boxes_clipped"] == 1 and summary["boxes_dropped"] == 2
    assert summary["size_mismatches"] == 1
    by_kind = {}
    for issue in summary["issues"]:
        by_kind.setdefault(issue["kind"], []).append(issue)
    files = {k: sorted(Path(i["file"]).name for i in v) for k, v in by_kind.items()}
    assert files == {"boxes_clipped": ["clip.xml"], "boxes_dropped": ["away.xml", "flip.xml"],
                     "images_skipped": ["badxml.xml", "noimg.jpg", "trunc.jpg"],
                     "size_mismatches": ["size.xml"]}
    problems = {Path(i["file"]).name: i["problem"] for i in summary["issues"]}
    assert "truncated" in problems["trunc.jpg"] and "malformed XML" in problems["badxml.xml"]
    assert problems["noimg.jpg"] == "image file missing"
    assert "empty box" in problems["flip.xml"] and "outside the 50x40 image" in problems["away.xml"]
    assert "XML size 64x48 differs from the image's 50x40" in problems["size.xml"]

    coco = load(tmp_path, "trainval")
    names = [im["voc_id"] for im in coco["images"]]
    assert names == ["clip", "flip", "away", "size", "float"]
    boxes = {names[a["image_id"] - 1]: a["bbox"] for a in coco["annotations"]}
    assert boxes["clip"] == [0.0, 0.0, 50.0, 20.0]  # clipped to the 50x40 image
    assert boxes["flip"] == [0.0, 0.0, 5.0, 5.0]  # only the valid object left
    assert boxes["float"] == [0.5, 1.5, 10.0, 10.5]
    assert "away" not in boxes
    assert s["images_without_objects"] == 1  # "away" kept, with no objects: never silent


def test_unknown_class_error_names_the_file_and_writes_nothing(tmp_path):
    clean_tree(tmp_path)
    with pytest.raises(DataError, match=r"a\.xml: object 1 \(cat\): unknown class 'cat' "
                                        r"\(known: dog\); set data.unknown_class: drop"):
        run(tmp_path, {"data.classes": ["dog"]})
    assert not (tmp_path / "processed").exists() and not (tmp_path / "reports").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_unknown_class_drop_is_counted(tmp_path):
    clean_tree(tmp_path)
    summary = run(tmp_path, {"data.classes": ["dog"], "data.unknown_class": "drop"})
    assert summary["objects_dropped_unknown_class"] == 2
    assert {Path(i["file"]).name for i in summary["issues"]} == {"a.xml", "b.xml"}
    assert summary["objects"] == 2


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="manifest.json: not found; run the download stage"):
        run(tmp_path)


def test_image_named_by_xml_filename(tmp_path):
    """labelImg: JPEG named differently from the XML stem; <filename> finds it."""
    raw = tmp_path / "raw"
    make_voc_root(raw / ROOT, {"x": (20, 20, [("cat", (1, 1, 5, 5), 0)])},
                  {"trainval": ["x"], "test": ["x"]})
    (raw / ROOT / "JPEGImages" / "x.jpg").rename(raw / ROOT / "JPEGImages" / "photo 1.jpg")
    (raw / ROOT / "Annotations" / "x.xml").write_text(
        voc_xml("photo 1.jpg", 20, 20, [("cat", (1, 1, 5, 5), 0)]))
    write_manifest(raw, [ROOT])
    run(tmp_path)
    assert load(tmp_path, "trainval")["images"][0]["file_name"].endswith("JPEGImages/photo 1.jpg")


def strict_json(path: Path):
    """The file parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(name: str):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_numbers_skip_the_image_and_the_json_stays_strict(tmp_path, value):
    raw = clean_tree(tmp_path)
    ann = raw / ROOT / "Annotations"
    box = ann / "a.xml"
    box.write_text(box.read_text().replace("<xmin>5</xmin>", f"<xmin>{value}</xmin>", 1))
    size = ann / "b.xml"
    size.write_text(size.read_text().replace("<width>30</width>", f"<width>{value}</width>"))
    summary = run(tmp_path)
    assert summary["images_skipped"] == 2 and summary["boxes_dropped"] == 0
    problems = {Path(i["file"]).name: i["problem"] for i in summary["issues"]}
    assert problems == {
        "a.xml": f"object 1 (cat) <xmin> is not a finite number: {value!r}",
        "b.xml": f"<size><width> is not a finite number: {value!r}"}
    for split in ("trainval", "test"):
        strict_json(tmp_path / "processed" / f"{split}.json")
    coco = strict_json(tmp_path / "processed" / "trainval.json")
    assert [im["voc_id"] for im in coco["images"]] == ["c"]
    assert strict_json(tmp_path / "reports" / "data_summary.json")["images_skipped"] == 2


def point_b_at(tmp_path: Path, spelling: str | None = None, link: Path | None = None) -> Path:
    """clean_tree with image b replaced: its JPEG gone, a 30x60 JPEG outside the dataset at
    tmp_path/outside/secret.jpg, and b.xml's <filename> set to `spelling` (or b.jpg turned into
    a symlink at `link`, relative to JPEGImages, pointing to it)."""
    raw = clean_tree(tmp_path)
    jpegs = raw / ROOT / "JPEGImages"
    (jpegs / "b.jpg").rename(tmp_path / "secret.jpg")
    (tmp_path / "outside").mkdir()
    secret = (tmp_path / "secret.jpg").rename(tmp_path / "outside" / "secret.jpg")
    if spelling is not None:
        (raw / ROOT / "Annotations" / "b.xml").write_text(
            voc_xml(spelling, 30, 60, [("cat", (2, 3, 4, 5), 0)]))
    if link is not None:
        (jpegs / link).parent.mkdir(parents=True, exist_ok=True)
        (jpegs / link).symlink_to(secret)
    return secret


def assert_b_skipped_as_outside(tmp_path: Path, summary: dict, secret: Path) -> None:
    assert summary["images_skipped"] == 1
    [issue] = summary["issues"]
    assert issue["file"] == f"{ROOT}/Annotations/b.xml" and issue["kind"] == "images_skipped"
    assert f"resolves to {secret.resolve()}, outside {ROOT}/JPEGImages; skipped" in issue["problem"]
    coco = load(tmp_path, "trainval")
    assert [im["voc_id"] for im in coco["images"]] == ["a", "c"]
    assert all("secret" not in im["file_name"] for im in coco["images"])


@pytest.mark.parametrize("spelling", ["absolute", "../../../../outside/secret.jpg",
                                      "../JPEGImages/../../../../outside/secret.jpg"])
def test_filename_outside_jpegimages_is_skipped(tmp_path, spelling):
    if spelling == "absolute":
        spelling = str(tmp_path / "outside" / "secret.jpg")
    secret = point_b_at(tmp_path, spelling)
    summary = run(tmp_path)
    assert_b_skipped_as_outside(tmp_path, summary, secret)
    assert repr(spelling) in summary["issues"][0]["problem"]


@pytest.mark.parametrize("link, spelling", [("b.jpg", None), ("inner/photo.jpg", "inner/photo.jpg")])
def test_symlink_out_of_jpegimages_is_skipped(tmp_path, link, spelling):
    secret = point_b_at(tmp_path, spelling, link=Path(link))
    assert_b_skipped_as_outside(tmp_path, run(tmp_path), secret)


def test_image_id_climbing_out_of_the_dataset_is_skipped(tmp_path):
    raw = clean_tree(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.xml").write_text(voc_xml("evil.jpg", 20, 20, []))
    lst = raw / ROOT / "ImageSets" / "Main" / "trainval.txt"
    lst.write_text(lst.read_text() + "../../../../outside/evil\n")
    summary = run(tmp_path)
    [issue] = summary["issues"]
    assert issue["file"] == f"{ROOT}/ImageSets/Main/trainval.txt"
    assert issue["problem"] == (f"image ../../../../outside/evil: annotation resolves to "
                                f"{(tmp_path / 'outside' / 'evil.xml').resolve()}, outside "
                                f"{ROOT}/Annotations; skipped")
    assert summary["splits"]["trainval"]["images_listed"] == 4
    assert [im["voc_id"] for im in load(tmp_path, "trainval")["images"]] == ["a", "b", "c"]


def test_paths_that_stay_inside_jpegimages_are_used(tmp_path):
    """`..` that stays inside, an absolute path into JPEGImages, and a symlinked JPEGImages
    folder (a user linking their images in) are all inside the dataset."""
    raw = clean_tree(tmp_path)
    jpegs = raw / ROOT / "JPEGImages"
    (jpegs / "sub").mkdir()
    (jpegs / "b.jpg").rename(jpegs / "sub" / "bee.jpg")
    (jpegs / "c.jpg").rename(jpegs / "sea.jpg")
    ann = raw / ROOT / "Annotations"
    (ann / "b.xml").write_text(voc_xml("sub/../sub/bee.jpg", 30, 60, [("cat", (2, 3, 4, 5), 0)]))
    (ann / "c.xml").write_text(voc_xml(str((jpegs / "sea.jpg").resolve()), 20, 20, []))
    jpegs.rename(tmp_path / "images")
    jpegs.symlink_to(tmp_path / "images", target_is_directory=True)
    summary = run(tmp_path)
    assert summary["issues"] == [] and summary["images_skipped"] == 0
    coco = load(tmp_path, "trainval")
    assert [im["voc_id"] for im in coco["images"]] == ["a", "b", "c"]
    assert (coco["images"][1]["width"], coco["images"][1]["height"]) == (30, 60)
    for im in coco["images"]:
        assert (tmp_path / "processed" / im["file_name"]).is_file()
