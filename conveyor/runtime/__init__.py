"""The runtime: a model cut into stages, one process per pipeline rank.

    import torch
    from conveyor.runtime import Pipeline, launch

    def main(ctx):                                   # runs once per rank
        torch.manual_seed(0)                         # the same model on every rank
        model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
        pipe = Pipeline(model, loss_fn=torch.nn.functional.mse_loss,
                        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
                        schedule="1f1b", microbatches=4, ctx=ctx)
        x, y = torch.randn(16, 8), torch.randn(16, 8)  # the same batch on every rank
        return pipe.step(x, y).loss

    if __name__ == "__main__":
        losses = launch(main, nprocs=2)  # every rank's result; or: torchrun ... script.py

Needs torch. Guide: https://github.com/conveyor-pp/conveyor/blob/main/docs/runtime.md, or help(Pipeline).
"""

from conveyor.runtime.train.checkpoint_io import CheckpointError, export_state_dict
from conveyor.runtime.procs.elastic import CheckpointPolicy, latest_checkpoint, restart_count
from conveyor.runtime.errors import (
    AgreementError, FailureReport, NonFiniteError, PeerFailedError, RankFailedError, StageError,
)
from conveyor.runtime.transport.group import RankContext, init_rank
from conveyor.runtime.procs.launcher import LaunchOptions, is_driver, launch
from conveyor.runtime.train.measure import measure
from conveyor.runtime.train.amp import LossScale
from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig, StepResult, microbatch_sizes
from conveyor.runtime.execute.stages import SequentialStage, split_model
from conveyor.runtime.execute.aux import add_aux_loss, collect_aux
from conveyor.runtime.train.generate import Generation
from conveyor.runtime.train.preflight import CacheBudgetError, ContextError, LanesError

__all__ = [
    "Pipeline", "PipelineConfig", "StepResult", "microbatch_sizes",
    "launch", "LaunchOptions", "is_driver", "measure", "RankContext", "init_rank",
    "split_model", "SequentialStage", "export_state_dict", "CheckpointError",
    "CheckpointPolicy", "latest_checkpoint", "restart_count",
    "StageError", "AgreementError", "PeerFailedError", "RankFailedError", "FailureReport",
    "LossScale", "NonFiniteError", "add_aux_loss", "collect_aux",
    "Generation", "ContextError", "CacheBudgetError", "LanesError",
]
