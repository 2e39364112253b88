"""Whether numba compiles, and when it starts: `with compiling(announce) as c: kernel(...)`.

numba caches the machine code of `cache=True` kernels on disk, so only a fresh install (or a changed
source) compiles them, which for the analog substrate's kernel takes tens of seconds. numba's event
API (`numba.core.event`) fires a "numba:compile" event when, and only when, a function is really
compiled (loading it from the disk cache fires none), so a listener can say "compiling kernels" at
the moment compilation starts and tell compile time from run time afterwards. A module of its own:
the kernels' cache keys hash the source of core/jit.py (jit.sources_key), which this must not touch.
"""

from __future__ import annotations

import time
from typing import Callable


class compiling:
    """`announce()` is called once, when numba starts compiling a function inside the block (one of
    the dispatchers `only`, if given: numba also compiles small helpers of its own, such as those of
    typed lists, in every new process); then `compiled` says whether it compiled and `seconds` how long
    the whole block took."""

    def __init__(self, announce: Callable[[], None] | None = None, only=None):
        self.announce = announce
        self.only = None if only is None else tuple(only)
        self.compiled = False
        self.seconds = 0.0

    def __enter__(self) -> "compiling":
        from numba.core import event

        outer = self

        class _Listener(event.Listener):
            def on_start(self, ev) -> None:
                if outer.only is not None and not any(ev.data.get("dispatcher") is d for d in outer.only):
                    return
                if not outer.compiled:
                    outer.compiled = True
                    if outer.announce is not None:
                        outer.announce()

            def on_end(self, ev) -> None:
                pass

        self._installed = event.install_listener("numba:compile", _Listener())
        self._installed.__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._installed.__exit__(*exc)
