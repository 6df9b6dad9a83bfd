"""The runtime: a model cut into stages, one process per pipeline rank.

    from conveyor.runtime import Pipeline, launch
    def main(ctx):                       # runs once per rank
        pipe = Pipeline(model, loss_fn=..., optimizer=lambda ps: torch.optim.SGD(ps, 0.1),
                        schedule="1f1b", microbatches=8)
        for x, y in batches:
            result = pipe.step(x, y)     # the same batch on every rank
        return result.loss

    if __name__ == "__main__":
        losses = launch(main, nprocs=4)  # or: torchrun --nproc-per-node 4 script.py

Needs torch. See docs/runtime.md.
"""

from conveyor.runtime.train.checkpoint_io import CheckpointError, export_state_dict
from conveyor.runtime.procs.elastic import CheckpointPolicy, latest_checkpoint, restart_count
from conveyor.runtime.errors import (
    AgreementError, FailureReport, NonFiniteError, PeerFailedError, RankFailedError, StageError,
)
from conveyor.runtime.transport.group import RankContext, init_rank
from conveyor.runtime.procs.launcher import LaunchOptions, launch
from conveyor.runtime.train.measure import measure
from conveyor.runtime.train.amp import LossScale
from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig, StepResult, microbatch_sizes
from conveyor.runtime.execute.stages import SequentialStage, split_model
from conveyor.runtime.execute.aux import add_aux_loss, collect_aux

__all__ = [
    "Pipeline", "PipelineConfig", "StepResult", "microbatch_sizes",
    "launch", "LaunchOptions", "measure", "RankContext", "init_rank",
    "split_model", "SequentialStage", "export_state_dict", "CheckpointError",
    "CheckpointPolicy", "latest_checkpoint", "restart_count",
    "StageError", "AgreementError", "PeerFailedError", "RankFailedError", "FailureReport",
    "LossScale", "NonFiniteError", "add_aux_loss", "collect_aux",
]
