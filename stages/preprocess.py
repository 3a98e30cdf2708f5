"""DVC stage `preprocess` (see dvc.yaml): the same as `frcnn preprocess`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["preprocess", *sys.argv[1:]])
