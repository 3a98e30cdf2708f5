"""Benchmarks of frcnn against torchvision's Faster R-CNN, outside the library.

`frcnn bench [--quick]` (or `python benchmarks/bench_model.py`) runs `benchmarks.bench.run_bench`:

- `peer`: torchvision's detector built to match ours, weights copied, BatchNorm calibrated;
- `timing`: one step of each kind, alternating timed rounds, ratio records and their lines;
- `memory`: peak memory (a child process per model on CPU, `max_memory_allocated` on CUDA);
- `profiling`: one profiled call, forward stage times and top ops;
- `bench_evaluation`: evaluation time (`voc_metrics` vs pycocotools) on a synthetic VOC-sized set;
- `bench_dataloader`: data-loader images/s;
- `bench`: the whole run and its report (`reports/benchmarks.{md,json}`).

`train_peer` (a script) trains the same peer on the pipeline's data for an accuracy comparison.
Run from the repository root (or with it on `sys.path`): the modules import each other as
`benchmarks.<name>`.
"""
