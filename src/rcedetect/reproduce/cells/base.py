"""What every cell is: a name, the config that keys its stored result, its computation, its cost."""

from ..context import RunContext
from ..costs import CostModel
from ..progress import NullProgress


class Cell:
    """One result of the reproduction (RUN/cells/<name>.json).

    A cell's stored result is reused as long as `config(ctx)` is unchanged, so the config names
    everything `compute` depends on. Subclasses are small frozen dataclasses of their parameters.
    """

    @property
    def name(self) -> str:
        raise NotImplementedError

    def config(self, ctx: RunContext) -> dict:
        raise NotImplementedError

    def compute(self, ctx: RunContext, progress: NullProgress) -> dict:
        """The JSON-able result; `progress.fraction` / `progress.chunk_callback` report how far it is."""
        raise NotImplementedError

    def cost(self, ctx: RunContext, costs: CostModel) -> float:
        """Estimated seconds on a quiet 2-core CPU (weights the overall ETA)."""
        raise NotImplementedError
