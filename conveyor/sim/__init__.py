"""Prediction: the cost model, the simulator and the timeline type."""

from conveyor.sim.cost import CostModel
from conveyor.sim.critical import Binding, bindings, critical_path
from conveyor.sim.simulate import formula_bubble, simulate
from conveyor.sim.timeline import Event, Timeline, load_timeline

__all__ = ["Binding", "bindings", "critical_path", "CostModel", "Event", "Timeline", "load_timeline", "simulate", "formula_bubble"]
