"""Two helpers of the numba kernels: tables of scalar forms, and cache keys that follow their sources.

Imports numba only inside `table` (called by the kernel modules), so `import neurohw` stays light.

**Tables.** A registry entry (an activation ρ, a pulse law f^±) carries its scalar form as a plain Python
function of one argument (a float, or a tuple of the law's arguments) that numba can compile.
`table(forms)` turns the forms, in registry order, into one numba function `form(i, x) = forms[i](x)`:
a chain of branches `if i == 0 … elif i == 1 …` inlined into the kernel that calls it, the code one
would write by hand, with the IDs taken from the registry instead of written twice. An index with no
form returns NaN.

**Cache keys.** numba's on-disk cache (`cache=True`) checks only the source file of the cached function:
a kernel that compiles in a form from another file (core/rng_kernels.py, core/activations.py, …) would
keep running the old code after that file changed. So every cached kernel takes one more argument,
`sources_key(*objects)`: an empty structured array whose field name is the sha256 of the source text of
those objects (modules or functions, and the order of the table). It is part of the kernel's signature,
so any change of those sources is a new signature, compiled once and cached again; the kernel never
reads it.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Callable, Sequence

import numpy as np


def table(forms: Sequence[Callable | None]) -> Callable:
    """The numba function `form(i, x) = forms[i](x)` (NaN where forms[i] is None or i is out of range),
    compiled into the caller as a chain of branches."""
    from numba import njit

    @njit(inline="always")
    def none(i, x):
        return np.nan

    chain = none
    for i in range(len(forms) - 1, -1, -1):
        if forms[i] is not None:
            chain = _branch(i, njit(inline="always")(forms[i]), chain)
    return chain


def _branch(index: int, form, rest):
    from numba import njit

    @njit(inline="always")
    def branch(i, x):
        if i == index:
            return form(x)
        return rest(i, x)

    return branch


def sources_key(*objects) -> np.ndarray:
    """An empty array whose dtype names the sha256 of the source text of `objects` (modules,
    functions, or strings such as the names of a table in order): the last argument of a cached
    kernel (module doc). None in `objects` stands for a missing form."""
    h = hashlib.sha256()
    for obj in objects:
        if obj is None:
            text = "<none>"
        elif isinstance(obj, str):
            text = obj
        else:
            try:
                text = inspect.getsource(obj)
            except (OSError, TypeError):  # defined interactively: its compiled code stands for its source
                code = getattr(obj, "__code__", None)
                text = repr(obj) if code is None else repr(code.co_code) + repr(code.co_consts) + repr(code.co_names)
        h.update(text.encode())
        h.update(b"\0")
    return np.empty(0, dtype=np.dtype([(f"sources_sha256_{h.hexdigest()[:32]}", np.uint8)]))
