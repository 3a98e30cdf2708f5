"""A torch Dataset over one of our COCO JSON files, its collate function and aspect-ratio batching.

    dataset[i] -> (image FloatTensor[3, H, W] in [0, 1],
                   {"boxes": float32 (N, 4) xyxy 0-based pixels, "labels": int64 (N,) in 1..K,
                    "image_id": int, "difficult": bool (N,)})

Training views drop difficult objects (`include_difficult=False`, the paper's and torchvision's
practice); evaluation keeps them (`include_difficult=True`) so the metric can ignore them.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from frcnn.data.flip import hflip
from frcnn.data.image_io import load_rgb
from frcnn.errors import DataError

Target = dict[str, Any]


class DetectionDataset(Dataset):
    """Images and boxes of a COCO JSON written by the preprocess/augment stages.

    `train` with `hflip` flips each image and its boxes left-right with probability 0.5.
    """

    def __init__(self, json_path: str | Path, train: bool, hflip: bool = False,
                 include_difficult: bool = False) -> None:
        self.json_path = Path(json_path)
        try:
            coco = json.loads(self.json_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{self.json_path}: not found; run the data stages first") from None
        except ValueError as exc:
            raise DataError(f"{self.json_path}: not valid JSON ({exc})") from None
        self.train, self.hflip, self.include_difficult = train, hflip, include_difficult
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
            raise DataError(f"{self.json_path}: category ids must be 1..K")
        self._class_names = tuple(c["name"] for c in cats)

        anns: dict[int, list[dict[str, Any]]] = {}
        for a in coco["annotations"]:
            if include_difficult or not a.get("difficult", 0):
                anns.setdefault(a["image_id"], []).append(a)
        root = self.json_path.parent
        self.images: list[dict[str, Any]] = []
        for im in coco["images"]:
            rows = anns.get(im["id"], [])
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in rows)],
                             np.float32).reshape(-1, 4)
            self.images.append({
                "id": int(im["id"]), "path": root / im["file_name"],
                "width": int(im["width"]), "height": int(im["height"]), "boxes": boxes,
                "labels": np.array([a["category_id"] for a in rows], np.int64),
                "difficult": np.array([bool(a.get("difficult", 0)) for a in rows], bool)})

    @property
    def class_names(self) -> tuple[str, ...]:
        """Foreground class names; label k is class_names[k - 1]."""
        return self._class_names

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes (background excluded)."""
        return len(self._class_names)

    def __len__(self) -> int:
        return len(self.images)

    def aspect_ratio(self, index: int) -> float:
        """width / height from the JSON, without decoding the image."""
        im = self.images[index]
        return im["width"] / im["height"]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        im = self.images[index]
        try:
            pixels = np.asarray(load_rgb(im["path"]))  # uint8 (H, W, 3), as displayed
        except OSError as exc:
            raise DataError(f"{im['path']}: cannot read image ({exc})") from None
        # Converted in numpy, not torch: torch's multi-threaded cast of a permuted view is
        # ~50x slower on a busy 2-core CPU. (PIL decodes: torchvision 0.29 deprecates its own.)
        chw = pixels.transpose(2, 0, 1).astype(np.float32, order="C")
        image = torch.from_numpy(np.multiply(chw, np.float32(1 / 255), out=chw))
        target = {"boxes": torch.from_numpy(np.array(im["boxes"], np.float32).reshape(-1, 4)),
                  "labels": torch.from_numpy(im["labels"].copy()), "image_id": im["id"],
                  "difficult": torch.from_numpy(im["difficult"].copy())}
        if self.train and self.hflip and bool(torch.rand(()) < 0.5):
            image, target = hflip(image, target)
        return image, target


def collate_fn(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Keep images of different sizes apart: ([image, ...], [target, ...])."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def aspect_ratio_groups(dataset: DetectionDataset, bins: Sequence[float] = (1.0,)) -> list[int]:
    """Group id per image by w/h: with bins (1.0,), 0 = portrait, 1 = landscape or square."""
    return [bisect.bisect_right(list(bins), dataset.aspect_ratio(i)) for i in range(len(dataset))]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share a group (e.g. aspect ratio), so padding wastes little.

    Takes indices from `sampler` in order and yields a batch as soon as one group has
    `batch_size` of them; leftovers come last, as smaller batches (unless `drop_last`).
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], group_ids: Sequence[int],
                 batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.group_ids = sampler, list(group_ids)
        self.batch_size, self.drop_last = batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for idx in self.sampler:
            buf = buffers.setdefault(self.group_ids[idx], [])
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield buf
                buffers[self.group_ids[idx]] = []
        if not self.drop_last:
            for buf in buffers.values():
                if buf:
                    yield buf

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for idx in self.sampler:
            counts[self.group_ids[idx]] = counts.get(self.group_ids[idx], 0) + 1
        if self.drop_last:
            return sum(n // self.batch_size for n in counts.values())
        return sum(-(-n // self.batch_size) for n in counts.values())
