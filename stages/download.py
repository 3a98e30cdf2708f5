"""DVC stage `download` (see dvc.yaml): the same as `frcnn download`."""

import sys

from frcnn.cli import app

if __name__ == "__main__":
    app(["download", *sys.argv[1:]])
