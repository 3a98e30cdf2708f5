"""DVC stage `pretrain` (see dvc.yaml): the same as `frcnn pretrain`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["pretrain", *sys.argv[1:]])
