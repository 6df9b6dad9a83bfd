"""Execute: running one rank's actions.

Owns the action interpreter (``interpreter``), the split backward into input
and weight gradients (``splitgrad``), building and splitting stages
(``stages``, ``split``), activation checkpointing (``recompute``), the
measured-timeline recorder (``recorder``), micro-batching (``batching``),
the per-rank plan the interpreter walks (``rankplan``), the precision policy
(``precision``) and compiled stages (``compiled``, with their backend
``compilebackend`` and the split of a compiled backward ``compilesplit``).

May import: ``conveyor.runtime.procs`` and below. Nothing from train.
"""
