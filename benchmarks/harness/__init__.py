"""The benchmark harness: conveyor against torch.distributed.pipelining.

Not part of the installed package; ``benchmarks/bench_pipeline.py`` imports it
(``sys.path`` gets ``benchmarks/``), and so do the tests (as
``benchmarks.harness``). ``config`` is torch-free; the other modules import
torch and are loaded only when a benchmark runs.
"""
