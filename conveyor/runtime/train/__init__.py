"""Train: the user's API over the interpreter.

Owns ``Pipeline`` and its configuration, the training loop (``trainloop``),
data parallelism (``dataparallel``), tied weights (``tied``), losses
(``losses``), checkpoints (``checkpoint_io``), what ``Pipeline`` takes from a
plan or profile (``planned``) and the benchmark helper ``measure``.

May import everything in ``conveyor.runtime`` below it (execute, procs,
transport). Never the profiler (``conveyor.measure``) or the apps
(``conveyor.demo``): they sit above the runtime.
"""
