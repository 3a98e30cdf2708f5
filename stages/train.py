"""DVC stage `train` (see dvc.yaml): the same as `frcnn train`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]])
