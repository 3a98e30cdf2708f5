"""VOC XML parsing: real VOC files, labelImg quirks, and unsafe or malformed XML."""

from pathlib import Path

import pytest

from frcnn.data.voc import AnnotationError, parse_voc_xml, voc_to_xyxy

VOC2007 = """<annotation>
	<folder>VOC2007</folder>
	<filename>000005.jpg</filename>
	<source><database>The VOC2007 Database</database></source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
	<object><name>chair</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>374</ymax></bndbox></object>
</annotation>"""

LABELIMG = """<annotation>
	<folder>imgs</folder>
	<filename>cat photo.jpg</filename>
	<path>/home/user/imgs/cat photo.jpg</path>
	<source><database>Unknown</database></source>
	<size><width>640</width><height>480</height><depth>3</depth></size>
	<object><name>cat</name><bndbox><xmin>10.5</xmin><ymin>20.0</ymin><xmax>100.7</xmax>
		<ymax>200</ymax></bndbox></object>
</annotation>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename></annotation>"""


def write(tmp_path: Path, text: str, name: str = "a.xml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parses_a_voc2007_file(tmp_path):
    ann = parse_voc_xml(write(tmp_path, VOC2007))
    assert (ann.filename, ann.width, ann.height) == ("000005.jpg", 500, 375)
    assert [o.name for o in ann.objects] == ["chair", "chair"]
    assert ann.objects[0].bndbox == (263, 211, 324, 339)
    assert (ann.objects[0].difficult, ann.objects[1].difficult) == (False, True)
    assert (ann.objects[0].truncated, ann.objects[1].truncated) == (False, True)
    assert ann.objects[0].pose == "Rear"


def test_voc_boxes_become_zero_based_xyxy():
    # VOC: pixels 1..10 inclusive = 10 px wide; ours: x from 0 to 10.
    assert voc_to_xyxy((1, 1, 10, 20)) == (0.0, 0.0, 10.0, 20.0)
    assert voc_to_xyxy((263, 211, 324, 339)) == (262.0, 210.0, 324.0, 339.0)


def test_tolerates_labelimg_output(tmp_path):
    ann = parse_voc_xml(write(tmp_path, LABELIMG))
    obj = ann.objects[0]
    assert obj.bndbox == (10.5, 20.0, 100.7, 200.0)  # float coordinates kept
    assert (obj.difficult, obj.truncated, obj.pose) == (False, False, "Unspecified")
    assert ann.filename == "cat photo.jpg"


def test_missing_size_is_none(tmp_path):
    ann = parse_voc_xml(write(tmp_path, "<annotation><size><width>0</width></size></annotation>"))
    assert (ann.width, ann.height, ann.objects) == (None, None, [])


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL])
def test_entity_tricks_are_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(AnnotationError, match=r"a\.xml: refused unsafe XML"):
        parse_voc_xml(path)


@pytest.mark.parametrize("text, message", [
    ("<annotation><object>", "malformed XML"),
    ("<notvoc/>", "root element is <notvoc>"),
    ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>", "has no <name>"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
     "</bndbox></object></annotation>", r"object 0 \(cat\) has no <bndbox><ymax>"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>a</ymin><xmax>5</xmax>"
     "<ymax>5</ymax></bndbox></object></annotation>", "<ymin> is not a number"),
    ("<annotation><object><name>cat</name><difficult>maybe</difficult><bndbox><xmin>1</xmin>"
     "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
     "<difficult> must be 0 or 1"),
])
def test_malformed_files_name_the_file_and_problem(tmp_path, text, message):
    path = write(tmp_path, text, "bad.xml")
    with pytest.raises(AnnotationError, match=message) as info:
        parse_voc_xml(path)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        parse_voc_xml(tmp_path / "nope.xml")


NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"]
BOX = {"xmin": "1", "ymin": "2", "xmax": "10", "ymax": "12"}


def box_xml(box: dict[str, str], width: str = "50", height: str = "40") -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in box.items())
    return (f"<annotation><filename>a.jpg</filename><size><width>{width}</width><height>{height}"
            f"</height></size><object><name>cat</name><bndbox>{coords}</bndbox></object></annotation>")


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("tag", list(BOX))
def test_a_non_finite_box_coordinate_is_malformed(tmp_path, tag, value):
    path = write(tmp_path, box_xml({**BOX, tag: value}), "bad.xml")
    with pytest.raises(AnnotationError) as info:
        parse_voc_xml(path)
    assert str(info.value) == f"{path}: object 0 (cat) <{tag}> is not a finite number: {value!r}"


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("tag", ["width", "height"])
def test_a_non_finite_size_is_malformed_like_any_unreadable_size(tmp_path, tag, value):
    sizes = {"width": "50", "height": "40", tag: value}
    path = write(tmp_path, box_xml(BOX, **sizes), "bad.xml")
    with pytest.raises(AnnotationError) as info:  # no OverflowError from int(float("inf"))
        parse_voc_xml(path)
    assert str(info.value) == f"{path}: <size><{tag}> is not a finite number: {value!r}"
    text = write(tmp_path, box_xml(BOX, **{**sizes, tag: "wide"}), "text.xml")
    with pytest.raises(AnnotationError, match=rf"<size><{tag}> is not a number: 'wide'"):
        parse_voc_xml(text)


@pytest.mark.parametrize("value", ["inf", "nan", "1e999"])
def test_a_non_finite_flag_is_malformed(tmp_path, value):
    xml = box_xml(BOX).replace("<bndbox>", f"<difficult>{value}</difficult><bndbox>")
    with pytest.raises(AnnotationError, match=rf"<difficult> must be 0 or 1, got {value!r}"):
        parse_voc_xml(write(tmp_path, xml))


def test_large_finite_numbers_still_parse(tmp_path):
    ann = parse_voc_xml(write(tmp_path, box_xml({**BOX, "xmax": "1e300"}, width="1e3")))
    assert ann.objects[0].bndbox == (1.0, 2.0, 1e300, 12.0) and ann.width == 1000
