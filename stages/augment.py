"""DVC stage `augment` (see dvc.yaml): the same as `frcnn augment`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["augment", *sys.argv[1:]])
