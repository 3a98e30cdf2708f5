"""The `download` stage: `data.dataset` -> data/raw/ (VOC layout) + data/raw/manifest.json.

Where each dataset comes from and how splits are found: `frcnn.data.download`. Archives are kept
in the cache folder (outside DVC's outs, so `dvc repro` does not download them again); the raw
folder is built in a staging folder and swapped in whole. If its manifest already describes the
same source, nothing is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from frcnn.config import Config
from frcnn.data.download import (
    DATASET_ARCHIVES,
    MANIFEST,
    gather_raw,
    reusable,
    source_of,
)
from frcnn.errors import DataError
from frcnn.fileio import atomic_write_json, check_writable, staged_dir
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors


def run(cfg: Config, *, raw_dir: Path, cache_dir: Path, retries: int = 4, backoff: float = 2.0,
        timeout: float = 60.0, progress: bool = True) -> dict[str, Any]:
    """Build `raw_dir` for `cfg.data.dataset` and return its manifest (also written to
    `raw_dir/manifest.json`). `retries`/`backoff`/`timeout` are per URL (see `fetch`)."""
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    d = cfg.data
    source = source_of(cfg)
    existing = reusable(raw_dir, source)
    if existing is not None:
        print(f"download: {raw_dir} already holds {d.dataset} (manifest matches); nothing to do")
        return existing

    check_writable(raw_dir, cache_dir / "probe")
    with staged_dir(raw_dir) as staging:
        splits, roots, notes = gather_raw(d, staging, cache_dir, retries, backoff, timeout,
                                          progress)
        for entries in splits.values():
            for e in entries:
                if not (staging / e["ids"]).is_file():
                    raise DataError(f"{d.dataset}: split list {e['ids']} missing from the data")
        manifest = {
            "dataset": d.dataset, "source": source, "roots": roots, "splits": splits,
            "class_order": "voc" if d.dataset in DATASET_ARCHIVES else "discover",
            "notes": notes,
        }
        atomic_write_json(staging / MANIFEST, manifest)
    for note in notes:
        print(f"download: {note}")
    files = [p for p in raw_dir.rglob("*") if p.is_file()]
    print(f"download: {d.dataset} -> {raw_dir}: {len(files)} files, "
          f"{sum(p.stat().st_size for p in files) / 2**20:.1f} MB, splits "
          + ", ".join(f"{split} ({len(entries)} list{'s' if len(entries) > 1 else ''})"
                      for split, entries in splits.items()))
    return manifest


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            out: Annotated[Path, typer.Option(help="output folder (VOC layout)")] = Path("data/raw"),
            cache: Annotated[Path, typer.Option(help="downloaded archives")] = Path("data/cache"),
            ) -> None:
    """Get the dataset of `data.dataset` into data/raw/ (VOC: MD5-checked, mirrors, resume)."""
    cfg = load(params, set_)
    with user_errors():
        run(cfg, raw_dir=out, cache_dir=cache)


if __name__ == "__main__":
    stage_main(command)
