"""DVC stage `train` (dvc.yaml passes its paths): `frcnn.pipeline.train`, the same as `frcnn train`."""

from frcnn.pipeline import train
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(train.command)
