"""The progress display of a run: which cell runs, its progress, and the overall ETA (tqdm).

Cells report through `fraction(done)` and `chunk_callback(label, lo, hi)`; `NullProgress` is the
same interface doing nothing, so a cell never asks whether a display exists. Under torchrun only
rank 0 shows the display, one line for the whole job: its own cells as they run, the other ranks'
cells as they finish (`add`).
"""


class NullProgress:
    """No display (also what a cell computed outside `Reproduction.run` reports to)."""

    def fraction(self, done: float) -> None:
        pass

    def chunk_callback(self, label: str, lo: float = 0.0, hi: float = 1.0):
        return None


NO_PROGRESS = NullProgress()


class Progress(NullProgress):
    """Overall bar weighted by the cells' estimated costs, plus a per-cell bar for chunked attacks."""

    def __init__(self, costs, done, enabled: bool, note: str = ""):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.note = f" ({note})" if note else ""
        self.finished = sum(1 for d in done if d)  # cells done, here or on other ranks
        self.total = sum(costs)
        initial = sum(c for c, d in zip(costs, done) if d)
        self.bar = tqdm(total=self.total, initial=initial, position=0, dynamic_ncols=True, disable=not enabled,
                        mininterval=0.5,
                        bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
        self.count = len(costs)
        self.cell_cost = 0.0
        self.cell_done = 0.0
        self.inner = None

    def start(self, index: int, name: str, cost: float) -> None:
        self.cell_cost, self.cell_done = cost, 0.0
        self.bar.set_description_str(f"[{index + 1}/{self.count}] {name}{self.note}")

    def fraction(self, done: float) -> None:
        """The running cell is `done` (0..1) complete."""
        step = self.cell_cost * min(1.0, max(done, 0.0)) - self.cell_done
        if step > 0:
            self.bar.update(step)
            self.cell_done += step

    def finish(self) -> None:
        self.fraction(1.0)
        self.close_inner()
        self.finished += 1

    def add(self, cost: float) -> None:
        """A cell of estimated `cost` finished elsewhere (another rank)."""
        self.bar.update(cost)
        self.finished += 1
        self.waiting()

    def waiting(self) -> None:
        """Nothing runs here until the other ranks catch up."""
        self.bar.set_description_str(f"[{self.finished}/{self.count}] waiting for the other ranks{self.note}")

    def chunk_callback(self, label: str, lo: float = 0.0, hi: float = 1.0):
        """A `CellStore.chunked` callback showing a per-cell bar and moving the overall one."""
        from tqdm.auto import tqdm

        self.close_inner()
        state = {}

        def on_chunk(done_rows, n):
            if self.enabled and self.inner is None:
                self.inner = tqdm(total=n, desc=f"  {label}", unit="img", position=1, leave=False,
                                  dynamic_ncols=True, mininterval=0.5)
                state["last"] = 0
            if self.inner is not None:
                self.inner.update(done_rows - state["last"])
                state["last"] = done_rows
            self.fraction(lo + (hi - lo) * done_rows / max(n, 1))

        return on_chunk

    def close_inner(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None

    def close(self) -> None:
        self.close_inner()
        self.bar.close()

