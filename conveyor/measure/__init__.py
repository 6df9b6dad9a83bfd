"""Measure: what a model and this machine cost, for the planner.

Owns the profiler (per-layer times and bytes), link and runtime-overhead
measurement, and the emulated device layers that stand in for accelerator
kernels on a CPU machine. It runs pipelines to measure them, so it sits above
the runtime and may import any of it; the runtime never imports this package.
"""
