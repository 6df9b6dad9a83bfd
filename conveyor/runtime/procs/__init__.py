"""Processes: starting ranks, keeping them alive together, and ending them.

Owns the local launcher and torchrun parity (``launcher``), process lifetime
(``lifetime``), a rank's last words (``lastwords``), the hang watch and its
forensics (``hang``, ``blame``), rank agreement on schedule, model and batch
(``agree``), elastic restart (``elastic``), core pinning (``affinity``) and the
heap settings of a rank (``heap``).

May import: ``conveyor.runtime.transport`` and below. Nothing from execute or
train: the hang watch and agreement see a pipeline only through the objects
they are handed.
"""
