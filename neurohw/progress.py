"""Progress of a long simulation: a bar, and an estimate of the time left printed once.

`with Progress(total, desc, bar=…, log=…, what=…) as p: substrate.run(spec, x, progress=p)`: the
substrate calls `p(done)` with the number of samples finished so far (a float inside a batch when the
substrate reports progress within one). The bar is tqdm's, shown only when `bar` is true and stderr
is a terminal (tqdm's `disable=None`).

**The estimate.** Nothing predicts the wall time of a simulation on an unknown machine better than
measuring it, so the estimate is a measurement of the run itself, made once: at the end of its first
batch, or `after_s` seconds (default 30) into the run if the first batch is still running, and
printed through `log` when the time left is at least `min_left_s` (default 10 s):

    simulating 200 images on Brian2 (lif, cython): about 6.3 min more (measured: 25 % in 2.1 min)

Substrates that report within a batch (Brian2's runtime targets) call `p(k0)` when the simulation of
the batch starting at sample k0 begins, after its network was built and its code generated. Then
the first batch's set-up time b (from the start to that call) and its time per sample r (after it)
are measured apart, and the time left is r × (samples left) + b × (batches not started). Otherwise
it is the linear extrapolation elapsed × (samples left) / (samples done). The bar's own rate follows
the run afterwards.
"""

from __future__ import annotations

import math
import time
from typing import Callable


_clock = time.perf_counter  # the clock of the estimate (a test replaces it)


def duration_text(seconds: float) -> str:
    """`42 s`, `6.3 min`, `2.4 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, total: int, desc: str, *, bar: bool = True, log: Callable[[str], None] | None = None,
                 what: str = "", first_batch: int | None = None, after_s: float = 30.0, min_left_s: float = 10.0,
                 unit: str = "img"):
        self.total = int(total)
        self.log, self.what = log, what
        self.first_batch = first_batch if first_batch is not None else self.total
        self.after_s, self.min_left_s = after_s, min_left_s
        self.estimate: float | None = None  # the seconds left, as estimated (None: not yet, or nothing to say)
        self._estimated = False
        self._start = _clock()
        self._setup: tuple[float, float] | None = None  # (time, samples done) when the first batch's simulation began
        self._bar = None
        if bar and self.total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)

    def __call__(self, done: float) -> None:
        if self._bar is not None and int(done) != self._bar.n:
            self._bar.update(int(done) - self._bar.n)
        now = _clock()
        if self._setup is None:
            self._setup = (now, done)
        if self._estimated or not 0 < done < self.total:
            return
        elapsed = now - self._start
        if done >= self.first_batch or elapsed >= self.after_s:
            self._estimated = True
            t_sim, done_sim = self._setup
            if done_sim == 0 and done > 0 and now > t_sim:  # set-up and simulation measured apart
                batches_left = math.ceil(self.total / self.first_batch) - max(1, math.ceil(done / self.first_batch))
                left = (now - t_sim) / done * (self.total - done) + (t_sim - self._start) * batches_left
            else:
                left = elapsed * (self.total - done) / done
            if left >= self.min_left_s:
                self.estimate = left
                if self.log is not None:
                    line = f"{self.what}: about {duration_text(left)} more (measured: {100 * done / self.total:.0f} % in {duration_text(elapsed)})"
                    if self._bar is None:
                        self.log(line)
                    else:  # on a line of its own, above the bar
                        with self._bar.external_write_mode():
                            self.log(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
