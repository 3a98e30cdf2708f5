"""dvc.yaml against the code: each stage's code deps are exactly what its script imports, and
each stage's `cmd` passes the paths its command would default to (so `frcnn <stage>` by hand and
`dvc repro` read and write the same files).

Run as a script (`python tests/pipeline/test_dvc_yaml.py`) it prints each stage's code deps, the
list to paste into dvc.yaml after a change of imports.
"""

from __future__ import annotations

import ast
import inspect
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "preprocess", "augment", "pretrain", "train", "evaluate", "explain", "report")


def _module_file(module: str) -> Path | None:
    """frcnn.a.b -> frcnn/a/b.py or frcnn/a/b/__init__.py; None outside frcnn."""
    if module != "frcnn" and not module.startswith("frcnn."):
        return None
    base = REPO.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules `path` imports (`from m import x` gives m, and m.x where that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if _module_file(f"{node.module}.{a.name}") is not None)
    return found


def code_deps(script: Path) -> set[str]:
    """Repo-relative files of frcnn that running `script` imports, transitively.

    A module named by an import counts with all its imports (also those inside functions, which
    run when the stage calls them); a package that is only a parent of a named module (importing
    frcnn.pipeline.train executes frcnn/__init__.py and frcnn/pipeline/__init__.py) counts with
    its top-level imports only, which is all that importing a submodule runs.
    """
    seen: dict[Path, bool] = {}
    todo: list[tuple[str, bool]] = [(m, True) for m in _imports(script, False)]
    while todo:
        module, named = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts)):  # parent packages run their top level
            todo.append((".".join(parts[:i]), False))
        path = _module_file(module)
        if path is None or seen.get(path, False) or (path in seen and not named):
            continue
        seen[path] = seen.get(path, False) or named
        todo += [(m, True) for m in _imports(path, top_level_only=not named)]
    return {p.relative_to(REPO).as_posix() for p in seen}


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stages_code_deps_are_exactly_what_its_script_imports(stage: str) -> None:
    script = f"stages/{stage}.py"
    listed = {d for d in _dvc()[stage]["deps"] if d.endswith(".py") or d.startswith("frcnn")}
    assert listed == {script} | code_deps(REPO / script)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stages_cmd_passes_the_paths_its_command_defaults_to(stage: str) -> None:
    import importlib

    command = importlib.import_module(f"frcnn.pipeline.{stage}").command
    argv = shlex.split(_dvc()[stage]["cmd"])
    assert argv[:2] == ["python", f"stages/{stage}.py"]
    # a closing flag: train's lets a killed `dvc repro` continue its checkpoint; explain's logs
    # its figures to the experiment's MLflow run
    flag = {"train": "--auto-resume", "explain": "--log"}.get(stage)
    assert (argv[-1] == flag) if flag else not argv[-1].startswith("--")
    argv = argv[:-1] if flag else argv
    passed = dict(zip(argv[2::2], argv[3::2]))
    defaults = {f"--{name.replace('_', '-')}": str(p.default)
                for name, p in inspect.signature(command).parameters.items()
                if isinstance(p.default, Path) and name != "params"}
    # beyond its paths, explain says which test image it draws
    chosen = {"explain": {"--gt": "data/processed/test.json", "--pick": "0"}}.get(stage, {})
    assert passed == {**defaults, **chosen}


def test_the_report_stage_depends_on_no_training_code() -> None:
    deps = code_deps(REPO / "stages/report.py")
    assert not any(d.startswith(("frcnn/model/", "frcnn/engine/", "frcnn/ops/")) for d in deps)
    assert "frcnn/pipeline/report.py" not in code_deps(REPO / "stages/train.py")


if __name__ == "__main__":
    for name in sys.argv[1:] or STAGES:
        print(f"{name}:")
        for dep in sorted(code_deps(REPO / f"stages/{name}.py")):
            print(f"      - {dep}")
