"""Shared code of the benchmark scripts in benchmarks/ (bench.py, bench_cpu_engine.py,
bench_gpu.py, floor.py, make_readme_table.py), one module per subject:

    console   log, Progress (tqdm bar or plain lines), describe (an exception in one line)
    timing    Clock, percentile / summarize, balanced_orders / in_order, paired_ratio
    memory    PeakMemory: peak CUDA allocation or peak RSS of one call
    impls     the implementations under test (Impl, ClipConfig, build_impls, import_fusedrnn)
    cases     Case, its inputs, the FLOP model, the timing / memory loops, run_case
    summary   the headline ratios of a case, packed vs padded
    machine   CPU model and flags, load, machine_info, git commit, output file names
    report    bench.py's markdown tables, legends, header lines and chart
    grids     bench.py's shape grids and presets (standard library only)
    markdown  markdown tables (standard library only)
    names     the CPU engine benchmark's implementation names (standard library only)

The scripts put benchmarks/ on sys.path (Python does for a script run from there) and
import the modules by name, e.g. `from benchlib.timing import Clock`. This file imports
nothing, so make_readme_table.py (standard library only) can use `grids`, `markdown` and
`names` without importing torch.
"""
