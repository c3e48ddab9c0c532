"""The cells of a reproduction, each owning its config, its computation and its cost.

    plan(preset) -> [Cell, ...]   every cell of a run, in the order they run

Order matters only through the models: the `train` cells of a depth precede every cell that uses
that model (training is an explicit step, never a side effect of asking for a model).
"""

from ..schema import FIG3_ATTACKS, OBJECTIVES, TABLE2_ATTACKS
from .base import Cell
from .baselines import BaselinesCell
from .models import DetectorCell, TrainCell
from .oblivious import CwcCell, Fig3Cell, RandCell, Table2Cell, TsneCell, detection_result
from .threat import Table3Cell, Table4Cell, WorstCaseCell

__all__ = ["Cell", "BaselinesCell", "CwcCell", "DetectorCell", "Fig3Cell", "RandCell", "Table2Cell", "Table3Cell",
           "Table4Cell", "TrainCell", "TsneCell", "WorstCaseCell", "detection_result", "plan"]


def _model_cells(preset, which: int) -> list:
    depth = preset.depths[which]
    return ([TrainCell(which, depth, o) for o in OBJECTIVES]
            + [DetectorCell(which, depth, o) for o in OBJECTIVES])


def plan(preset) -> list:
    """The cells of a run with `preset`, in run order (see `rcedetect.reproduce.schema` for the names)."""
    return [
        *_model_cells(preset, 0),
        *(Table2Cell(a, o) for a in TABLE2_ATTACKS for o in OBJECTIVES),
        *(BaselinesCell(o) for o in OBJECTIVES),  # after Table 2: its adversarial examples are cache hits
        *(TsneCell(o) for o in OBJECTIVES),
        *(RandCell(o) for o in OBJECTIVES),
        *(Fig3Cell(a, o) for a in FIG3_ATTACKS for o in OBJECTIVES),
        *(Table3Cell(k, o) for k in preset.cwwb_kappas for o in OBJECTIVES),
        *_model_cells(preset, 1),
        *(Table4Cell(s, t) for s in OBJECTIVES for t in OBJECTIVES),
        *(CwcCell(o) for o in OBJECTIVES),
        *(WorstCaseCell(o) for o in OBJECTIVES),
    ]
