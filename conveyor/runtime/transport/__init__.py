"""Transport: how tensors cross between ranks.

Owns process-group start-up and rank contexts (``group``), the dp x pp mesh
(``mesh``), point-to-point messages with shape handshakes and byte counts
(``comm``), the shared-memory CPU transport (``shm``) and the lowering of a
schedule's transfers (``transfers``).

May import: ``conveyor.runtime.errors``, ``conveyor.runtime.checks`` and the
torch-free core (``conveyor.errors``, ``conveyor.schedule``, ...). Nothing from
procs, execute or train.
"""
