"""What the OpenMP wait policy costs a CPU training step, alone and beside another CPU-bound job.

    python benchmarks/wait_policy.py [--rounds 3] [--steps 12] [--out reports]

torch's OpenMP threads spin between parallel regions unless told otherwise (libgomp's default:
GOMP_SPINCOUNT 300000); `frcnn` sets OMP_WAIT_POLICY=PASSIVE (they sleep at once) before torch
loads, in every entry point. The policy is read once, when torch loads the runtime, so each
measurement is its own process: a child that imports torch *before* frcnn (so the package's
default cannot act) with the policy under test in its environment, builds the default recipe's
model from params.yaml and times `--steps` training steps on a fixed batch of 4 random 256-px
images (the first 2 untimed). Policies alternate within each round, so a drifting machine load
hits both alike; the figure is the median over rounds of the paired ratio passive / spin, with the
rounds' range. "busy" runs one `while True: pass` process per core at normal priority beside the
child, the situation of a user whose laptop is doing anything else. The wait policy changes no
number the model computes, only the time. Writes <out>/wait_policy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

POLICIES = {"spin (libgomp default)": None, "passive (frcnn's default)": "PASSIVE"}

CHILD = r"""
import json, sys, time
import torch  # first: the runtime starts with the environment's policy, not the package's
from benchmarks.peer import make_inputs
from benchmarks.timing import make_train_step
from frcnn.config import load_config
from frcnn.model.build import build_model
torch.manual_seed(0)
model = build_model(load_config(sys.argv[1]), num_classes=6)
images, targets = make_inputs("resnet18_c4 256", 4, seed=1)
step = make_train_step(model, images, targets)
times = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
print(json.dumps(times[2:]))
"""


def child_step_time(policy: str | None, params: Path, steps: int) -> float:
    """Median seconds per training step in a fresh process under `policy` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD, str(params), str(steps)], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def start_busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(rounds: int, steps: int, params: Path) -> list[dict]:
    rows = []
    for load in ("quiet", "busy"):
        busy = start_busy(os.cpu_count() or 1) if load == "busy" else []
        try:
            samples: dict[str, list[float]] = {name: [] for name in POLICIES}
            for r in range(rounds):
                for name, policy in POLICIES.items():
                    samples[name].append(child_step_time(policy, params, steps))
                    print(f"{load} round {r + 1}/{rounds} {name}: "
                          f"{samples[name][-1]:.3f} s/step", flush=True)
        finally:
            stop(busy)
        spin, passive = samples.values()
        ratios = [p / s for p, s in zip(passive, spin)]
        rows.append({"load": load, "spin_s": statistics.median(spin),
                     "passive_s": statistics.median(passive),
                     "ratio_passive_over_spin": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "spin_samples": spin, "passive_samples": passive})
    return rows


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = ["# OpenMP wait policy: seconds per training step", "",
             (f"{meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, commit "
             f"{meta['commit']}, {meta['when']}. Default recipe (params.yaml), batch of 4 random "
             f"256-px images, median of {meta['steps'] - 2} steps per process, {meta['rounds']} "
             f"rounds alternating the policies. busy = one CPU-bound process per core beside it. "
             "The times are medians over rounds; the ratio is the median of each round's own "
             "passive / spin (with its range), so it need not equal the ratio of the two medians. "
             "Ratio < 1: sleeping threads are faster."), "",
             "| load | spin (libgomp default) | passive (frcnn's default) | passive / spin (range) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['spin_s']:.3f} s | {r['passive_s']:.3f} s | "
                     f"{r['ratio_passive_over_spin']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from frcnn.fileio import atomic_write_json, atomic_write_text
    from frcnn.tools.study import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    meta = {"machine": cpu_model() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit, "rounds": args.rounds, "steps": args.steps,
            "when": time.strftime("%Y-%m-%d")}
    rows = measure(args.rounds, args.steps, args.params)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "wait_policy.json", {"meta": meta, "rows": rows})
    markdown = to_markdown(meta, rows)
    atomic_write_text(args.out / "wait_policy.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
