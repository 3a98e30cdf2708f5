"""Named recipes (`presets.yaml`): each one a set of params.yaml overrides that `frcnn exp NAME`
turns into one `dvc exp run -n NAME -S key=value ...`.

A preset may name a `base` preset and change some of its keys; `--set` adds or replaces keys on
top. Every preset is validated against params.yaml before anything runs, so a typo in a key
fails here, with its name, and not hours into a GPU run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frcnn.config import Config, config_from_dict
from frcnn.errors import ConfigError
from frcnn.tools.study import yaml_value

_TEXT_FIELDS = ("about", "reference", "expected_gpu_time")


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    reference: str            # what the references report for it (or that none does)
    expected_gpu_time: str
    images_per_epoch: int     # of its training split, for the GPU check's wall-time projection
    settings: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, base included

    def overrides(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**self.settings, **(extra or {})}

    def command(self, extra: dict[str, Any] | None = None, name: str | None = None) -> list[str]:
        """`dvc exp run -n <name> -S key=value ...` as an argument list."""
        args = ["dvc", "exp", "run", "-n", name or self.name]
        for key, value in self.overrides(extra).items():
            args += ["-S", f"{key}={yaml_value(value)}"]
        return args

    def shell_command(self, extra: dict[str, Any] | None = None, name: str | None = None) -> str:
        return shlex.join(self.command(extra, name))

    def config(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Config:
        """The Config this preset trains with on top of `params` (params.yaml's content)."""
        try:
            return config_from_dict(params, self.overrides(extra))
        except ConfigError as exc:
            raise ConfigError(f"preset {self.name}: {exc}") from None


def load_presets(path: Path) -> dict[str, Preset]:
    """Every preset of `path`, with `base` presets merged in; errors name the file and preset."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    entries = raw.get("presets") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: must hold a mapping `presets: {{name: {{...}}}}`")

    def settings(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
        entry = entries[name]
        base = entry.get("base")
        if base is None:
            inherited: dict[str, Any] = {}
        elif base not in entries or base in seen:
            raise ConfigError(f"{path}: preset {name}: base {base!r} is "
                              f"{'circular' if base in seen else 'not a preset'}")
        else:
            inherited = settings(base, (*seen, name))
        own = entry.get("set") or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: preset {name}: `set` must map dotted keys to values")
        return {**inherited, **own}

    presets = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: preset {name}: must be a mapping")
        missing = [f for f in (*_TEXT_FIELDS, "images_per_epoch") if f not in entry]
        if missing:
            raise ConfigError(f"{path}: preset {name}: missing {', '.join(missing)}")
        presets[name] = Preset(name, *(str(entry[f]).strip() for f in _TEXT_FIELDS),
                               int(entry["images_per_epoch"]), settings(name, ()))
    return presets


def describe(preset: Preset) -> str:
    """A few lines for `frcnn exp --list`."""
    return (f"{preset.name}\n  {preset.about}\n  reference: {preset.reference}\n"
            f"  expected: {preset.expected_gpu_time}")
