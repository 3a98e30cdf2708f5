"""DVC stage `augment` (dvc.yaml passes its paths): `frcnn.pipeline.augment`, the same as `frcnn augment`."""

from frcnn.pipeline import augment
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(augment.command)
