"""DVC stage `report` (see dvc.yaml): the same as `frcnn report`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["report", *sys.argv[1:]])
