"""Mutation check: deliberate layout/metric bugs that the test suite must catch.

Not a test module (pytest collects `test_*.py` only, and this file defines no test functions);
run it as a script from anywhere:

    python tests/mutations.py            # baseline, then each mutation with its listed tests
    python tests/mutations.py --full     # the whole default suite (`pytest -q`) instead
    python tests/mutations.py --check-clean            # only the unmutated baseline
    python tests/mutations.py --only rpn_objectness_not_permuted --only eval_ap75_ap_small_swapped

For every mutation: copy the working tree (`git ls-files` plus untracked, non-ignored files) into a
temp dir, replace `old` by `new` in `path` (the old text must occur exactly once, else the list is
stale and the script stops before running anything), run `python -m pytest -x -q <tests>` there
with this interpreter, and report caught (tests failed) or survived (tests passed). The unmutated
copy is run first with the same tests and must pass, and `import frcnn` there must load the copy.
Exit status: 0 all caught; 1 a mutation survived or its run errored; 2 the baseline failed or the
list is stale.

When files move, update `path` and `tests` in MUTATIONS below; nothing else refers to them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# test files / node ids, relative to the repo root
RPN_TESTS = ["tests/model/test_rpn_oracle.py", "tests/model/test_rpn.py"]
EVAL_TESTS = ["tests/evaluation/test_evaluation_oracle.py", "tests/evaluation/test_evaluation.py"]
RPN = "frcnn/model/rpn.py"
COCO = "frcnn/evaluation/coco.py"
VOC = "frcnn/evaluation/voc.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str                 # file relative to the repo root
    old: str                  # exact text, must occur exactly once in `path`
    new: str
    tests: list[str] = field(default_factory=list)


MUTATIONS = [
    Mutation("rpn_objectness_not_permuted", RPN,
             "objectness = objectness.permute(0, 2, 3, 1).reshape(n, -1)",
             "objectness = objectness.reshape(n, -1)",
             RPN_TESTS),
    Mutation("rpn_deltas_read_as_4_by_A", RPN,
             "deltas = deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)",
             "deltas = deltas.view(n, 4, -1, h, w).transpose(1, 2).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)",
             RPN_TESTS),
    Mutation("rpn_border_check_h_w_swapped", RPN,
             "            h, w = image_size\n",
             "            w, h = image_size\n",
             RPN_TESTS),
    Mutation("rpn_clip_h_w_swapped", RPN,
             "boxes = clip_boxes(boxes, sizes[:, 0:1], sizes[:, 1:2])",
             "boxes = clip_boxes(boxes, sizes[:, 1:2], sizes[:, 0:1])",
             RPN_TESTS),
    Mutation("rpn_encode_arguments_swapped", RPN,
             "self.box_coder.encode(gt[matched[pos]], anchors[pos])",
             "self.box_coder.encode(anchors[pos], gt[matched[pos]])",
             RPN_TESTS),
    Mutation("eval_ap75_ap_small_swapped", COCO,
             'keys = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")',
             'keys = ("map", "ap50", "ap_small", "ap75", "ap_medium", "ap_large")',
             EVAL_TESTS),
    Mutation("eval_per_class_ap_at_iou_055_only", COCO,
             "per_ap[name] = _mean_valid(p)",
             "per_ap[name] = _mean_valid(p[1])  # iouThrs[1] == 0.55",
             EVAL_TESTS),
    Mutation("eval_devkit_tie_break_takes_last_gt", VOC,
             "order = np.lexsort((pair_gt, -iou, pair_det))",
             "order = np.lexsort((-pair_gt, -iou, pair_det))",
             EVAL_TESTS),
    # beyond the brief's eight: the same tie-break broken one step earlier, where GT are grouped
    Mutation("eval_gt_grouped_difficult_last", VOC,
             'order = np.argsort(key, kind="stable")',
             "order = np.lexsort((diff, key))",
             EVAL_TESTS),
]


def working_tree_files(repo: Path) -> list[str]:
    """Tracked files that still exist, plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


def copy_tree(repo: Path, files: list[str], dst: Path) -> None:
    for f in files:
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, target, follow_symlinks=False)


def check_stale(repo: Path, mutations: list[Mutation]) -> list[str]:
    """One line per mutation whose old text is not found exactly once (or whose file is gone)."""
    problems = []
    for m in mutations:
        file = repo / m.path
        if not file.is_file():
            problems.append(f"{m.name}: {m.path} does not exist")
            continue
        count = file.read_text().count(m.old)
        if count != 1:
            problems.append(f"{m.name}: old text found {count} times in {m.path} (expected 1): "
                            f"{m.old!r}")
        if not m.tests:
            problems.append(f"{m.name}: no tests listed")
    return problems


def pytest_command(tests: list[str] | None) -> list[str]:
    # -p no:cacheprovider: nothing written beside the copy; -x: the first failure is enough
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    return base + (["-q"] if tests is None else ["-x", "-q", *tests])


def run_in_copy(repo: Path, files: list[str], tests: list[str] | None,
                mutation: Mutation | None, keep: bool) -> tuple[int, str, float, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="frcnn-mut-"))
    try:
        copy_tree(repo, files, tmp)
        if mutation is not None:
            file = tmp / mutation.path
            text = file.read_text()
            assert text.count(mutation.old) == 1, mutation.name   # checked up front too
            file.write_text(text.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
        if mutation is None:
            # the copy's frcnn must be the one imported, not an installed (editable) one elsewhere
            where = subprocess.run([sys.executable, "-c", "import frcnn; print(frcnn.__file__)"],
                                   cwd=tmp, env=env, capture_output=True, text=True)
            loaded = Path(where.stdout.strip() or "?").resolve()
            if where.returncode or tmp.resolve() not in loaded.parents:
                return 3, f"import frcnn loaded {loaded}, not the copy in {tmp}\n{where.stderr}", 0.0, tmp
        start = time.monotonic()
        proc = subprocess.run(pytest_command(tests), cwd=tmp, env=env, capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start, tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="run the whole default suite (pytest -q) instead of the listed tests")
    parser.add_argument("--check-clean", action="store_true",
                        help="only run the unmutated baseline")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this mutation (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp copies (paths printed)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)

    mutations = MUTATIONS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            print(f"unknown mutation(s): {sorted(unknown)}", file=sys.stderr)
            return 2
        mutations = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    stale = check_stale(REPO, MUTATIONS)
    if stale:
        print("stale mutation list:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 2

    files = working_tree_files(REPO)
    baseline_tests = None if args.full else sorted({t for m in mutations for t in m.tests})
    print(f"baseline (unmutated copy of {len(files)} files): "
          f"{'full suite' if args.full else ' '.join(baseline_tests)}", flush=True)
    rc, out, secs, tmp = run_in_copy(REPO, files, baseline_tests, None, args.keep)
    print(f"  {'passed' if rc == 0 else f'FAILED (rc={rc})'} in {secs:.0f} s: {last_line(out)}"
          + (f"  [{tmp}]" if args.keep else ""), flush=True)
    if rc != 0:
        print(out, file=sys.stderr)
        return 2
    if args.check_clean:
        return 0

    results = []
    for m in mutations:
        tests = None if args.full else m.tests
        rc, out, secs, tmp = run_in_copy(REPO, files, tests, m, args.keep)
        status = {0: "SURVIVED", 1: "caught"}.get(rc, f"ERROR (pytest rc={rc})")
        results.append((m.name, status))
        print(f"{status:>9}  {m.name}  ({m.path}, {secs:.0f} s): {last_line(out)}"
              + (f"  [{tmp}]" if args.keep else ""), flush=True)
        if rc not in (0, 1):
            print(out, file=sys.stderr)

    caught = sum(s == "caught" for _, s in results)
    print(f"\n{caught}/{len(results)} mutations caught")
    for name, status in results:
        if status != "caught":
            print(f"  not caught: {name} ({status})")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
