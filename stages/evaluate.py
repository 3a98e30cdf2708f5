"""DVC stage `evaluate` (see dvc.yaml): the same as `frcnn evaluate`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]])
