"""DVC stage `explain` (dvc.yaml passes its paths): `frcnn.pipeline.explain`, the same as `frcnn explain`."""

from frcnn.pipeline import explain
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(explain.command)
