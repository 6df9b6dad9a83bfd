"""Train an MLP on scikit-learn's digits, cut into 2 pipeline stages.

The same file runs both ways, unchanged:

    python examples/train_mlp.py                                   # local launcher
    torchrun --standalone --nproc-per-node 2 examples/train_mlp.py # torchrun

and prints the same losses either way: every rank draws the same batches.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

from conveyor.runtime import Pipeline, is_driver, launch
EPOCHS, BATCH, M = 3, 100, 4


def train(ctx):
    """Runs once per rank. Returns this rank's view; launch() collects them."""
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)  # (1797, 64)
    y = torch.tensor(y)                              # (1797,)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    pipe = Pipeline(model, loss_fn=nn.functional.cross_entropy,
                    optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
                    schedule="1f1b", microbatches=M, ctx=ctx)
    losses = []
    for epoch in range(EPOCHS):
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch))
        total = 0.0
        for i in range(0, len(X), BATCH):
            idx = order[i:i + BATCH]
            total += pipe.step(X[idx], y[idx]).loss * len(idx)  # same batch on every rank
        losses.append(total / len(X))
    logits = pipe.predict(X)  # on the last stage's rank; None elsewhere
    acc = None if logits is None else float((logits.argmax(1) == y).float().mean())
    return {"rank": ctx.rank, "launcher": ctx.launcher, "losses": losses, "accuracy": acc}


if __name__ == "__main__":
    results = launch(train, nprocs=2)
    if is_driver():  # every rank has the results; the parent (or rank 0 under torchrun) prints
        print(f"launcher: {results[0]['launcher']}, ranks: {len(results)}")
        for epoch, loss in enumerate(results[0]["losses"]):
            print(f"epoch {epoch + 1} loss {loss:.6f}")
        print(f"train accuracy: {100 * results[-1]['accuracy']:.1f}%")
