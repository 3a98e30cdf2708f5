"""DVC stage `evaluate` (dvc.yaml passes its paths): `frcnn.pipeline.evaluate`, the same as `frcnn evaluate`."""

from frcnn.pipeline import evaluate
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(evaluate.command)
