"""DVC stage `preprocess` (dvc.yaml passes its paths): `frcnn.pipeline.preprocess`, the same as `frcnn preprocess`."""

from frcnn.pipeline import preprocess
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(preprocess.command)
