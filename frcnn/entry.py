"""The `frcnn` console script. `frcnn predict ... --model model.onnx` is answered here, before the
command line of the full package is built: that path must run without importing torch. Every
other command is `frcnn.cli.app`."""

from __future__ import annotations

import sys


def main() -> None:  # pragma: no cover - console entry point (tested through a subprocess)
    from frcnn.deploy.onnx_predict import is_onnx_predict

    if is_onnx_predict(sys.argv[1:]):
        from frcnn.deploy.onnx_predict import main as onnx_main

        sys.exit(onnx_main(sys.argv[2:]))
    from frcnn.cli import app

    app()
