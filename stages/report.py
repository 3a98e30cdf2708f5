"""DVC stage `report` (dvc.yaml passes its paths): `frcnn.pipeline.report`, the same as `frcnn report`."""

from frcnn.pipeline import report
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(report.command)
