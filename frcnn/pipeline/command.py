"""What every command shares: `--params`, `--set key=value`, and one-line errors.

A stage module defines its `command` with these options and its paths as options whose defaults
are the pipeline's layout; `dvc.yaml` passes the same paths explicitly, the `frcnn` CLI registers
the same function, and `stages/<name>.py` runs it (`stage_main`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from frcnn.config import Config, load_config
from frcnn.errors import ConfigError, UserError

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, repeatable")]

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """["loss.lambda=10", "anchors.scales=[32,64]"] -> {"loss.lambda": 10, ...} (YAML values)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        if _EXPONENT_FLOAT.fullmatch(value.strip()):
            out[key.strip()] = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
            continue
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--set {item}: not a YAML value ({reason})") from None
    return out


def fail(exc: BaseException) -> None:
    """`error: <message>` on stderr, exit status 2 (or the error's own `exit_code`, e.g. 130 for
    a training stopped by Ctrl-C)."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=getattr(exc, "exit_code", 2))


@contextlib.contextmanager
def user_errors(*also: type[BaseException]) -> Iterator[None]:
    """Turn a `UserError` (and the exception types in `also`) into one line and exit 2."""
    try:
        yield
    except (UserError, *also) as exc:
        fail(exc)


def load(params: Path, set_: list[str] | None) -> Config:
    """The config of `--params` with the `--set` overrides, or one line naming the bad key."""
    with user_errors():
        return load_config(params, parse_overrides(set_))


def stage_main(command: Callable[..., Any]) -> None:
    """Run `command` as a script's whole command line (`python stages/<name>.py --opt ...`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    app()
