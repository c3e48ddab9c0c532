"""What every cell is: a name, the config that keys its stored result, its computation, its cost."""

from ..context import RunContext
from ..costs import CostModel
from ..progress import NullProgress


class Cell:
    """One result of the reproduction (RUN/cells/<name>.json).

    A cell's stored result is reused as long as `config(ctx)` is unchanged, so the config names
    everything `compute` depends on. Subclasses are small frozen dataclasses of their parameters.

    Under torchrun (`Reproduction`), `trains` cells run first, each on one rank; a `spread` cell's cost
    is its chunked attacks, so every rank runs it and computes a share of their chunks; any other
    cell runs on one rank.
    """

    trains = False
    spread = False

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

    def spread_n(self, ctx: RunContext) -> int:
        """A spread cell's images per chunked attack: how many chunks its ranks share (the estimate of a
        run on several ranks)."""
        raise NotImplementedError
