"""DVC stage `download` (dvc.yaml passes its paths): `frcnn.pipeline.download`, the same as `frcnn download`."""

from frcnn.pipeline import download
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(download.command)
