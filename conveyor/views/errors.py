"""The error the views raise on bad options (the CLI turns it into one line, exit 2)."""

from conveyor.errors import ConveyorError

__all__ = ["ViewError"]


class ViewError(ConveyorError, ValueError):
    """A view got an option it cannot use: a P or M out of range, a cost ratio
    the page does not offer, an output format it cannot write."""
