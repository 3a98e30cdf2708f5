"""Data stages: fetch a VOC-layout dataset, convert it to COCO JSON, augment it, load it for training.

    download.py   data.dataset -> VOC roots (VOC archives from mirrors, a user URL, or synth.py)
    fetch.py      resumable, MD5-checked downloads; archive.py: safe extraction
    synth.py      the embedded default dataset, generated in exact VOC layout
    voc.py        VOC XML parsing (defusedxml) and VOC's 1-based boxes -> our 0-based xyxy
    preprocess.py VOC annotations -> COCO dicts per split, with every problem reported
    augment.py    albumentations copies of a training image
    flip.py       the left-right flip (dataset and online)
    dataset.py    DetectionDataset over a COCO JSON, collate_fn, aspect-ratio grouping
The stages that run these and write the files are in `frcnn.pipeline`.

COCO JSON as written here: `file_name` is relative to the folder holding the JSON, `bbox` is
[x, y, w, h] in our 0-based continuous pixels (VOC xmin=1 -> x=0, w = xmax - xmin + 1),
`category_id` 1..K equals the model label, and VOC `difficult` objects carry `iscrowd=1` so that
pycocotools ignores them (plus our own `difficult`/`truncated` 0/1 fields).
"""

from frcnn.errors import DataError

__all__ = ["DataError"]
