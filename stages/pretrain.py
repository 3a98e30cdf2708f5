"""DVC stage `pretrain` (dvc.yaml passes its paths): `frcnn.pipeline.pretrain`, the same as `frcnn pretrain`."""

from frcnn.pipeline import pretrain
from frcnn.pipeline.command import stage_main

if __name__ == "__main__":
    stage_main(pretrain.command)
