"""The reliability catalogue (benchmarks/reliability.py) names only tests that exist, and its
report turns test outcomes into one line per case."""

import subprocess
import sys

from benchmarks.reliability import CASES, REPO, markdown, node_ids


def test_every_test_the_catalogue_names_exists():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "",
                          "-p", "no:cacheprovider", *node_ids()], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    collected = {line.split("[")[0] for line in out.stdout.splitlines() if "::" in line}
    assert set(node_ids()) <= collected


def test_a_case_fails_when_one_of_its_tests_fails_or_did_not_run():
    first, second = CASES[0][3][0], CASES[1][3][0]
    results = {t: ("passed", "") for t in node_ids()}
    results[first] = ("failed", "boom")
    del results[second]
    text = markdown(results)
    assert f"{len(CASES)} cases: {len(CASES) - 2} passed, 2 failed, 0 skipped." in text
    assert "boom" in text
