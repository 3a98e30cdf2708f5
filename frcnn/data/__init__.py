"""Data stages: fetch a VOC-layout dataset, convert it to COCO JSON, augment it, load it for training.

    download.py   data.dataset -> data/raw/ (VOC archives from mirrors, a user URL, or synth.py)
    synth.py      the embedded default dataset, generated in exact VOC layout
    voc.py        VOC XML parsing (defusedxml) and VOC's 1-based boxes -> our 0-based xyxy
    preprocess.py data/raw/ -> data/processed/{trainval,test}.json + reports/data_summary.*
    augment.py    albumentations copies -> data/augmented/trainval.json + images/
    dataset.py    DetectionDataset over a COCO JSON, collate_fn, aspect-ratio grouping
    io.py         DataError and the atomic writes every stage uses

COCO JSON as written here: `file_name` is relative to the folder holding the JSON, `bbox` is
[x, y, w, h] in our 0-based continuous pixels (VOC xmin=1 -> x=0, w = xmax - xmin + 1),
`category_id` 1..K equals the model label, and VOC `difficult` objects carry `iscrowd=1` so that
pycocotools ignores them (plus our own `difficult`/`truncated` 0/1 fields).
"""

from frcnn.data.io import DataError

__all__ = ["DataError"]
