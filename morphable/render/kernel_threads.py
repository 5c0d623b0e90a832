"""How many threads the renderer's compiled CPU kernels (numba, ``parallel=True``) may split their work over.

The rasteriser and the SH shading (:mod:`morphable.render.cpu_kernels`) each have a serial kernel and a
parallel one that runs ``n`` chunks of the same loop (triangles or pixels; per-chunk z-buffers or gradient
buffers, merged after) through numba's parallel launcher.

Why this works beside torch: numba's OpenMP threading layer (``omppool``) resolves its OpenMP calls
(``GOMP_parallel``, ``omp_*``) in the process's global symbol scope first, where torch, imported before numba,
has already put its own ``libgomp``. So a parallel kernel runs on torch's intra-op worker threads, which spin
for a while after each torch operation waiting for work, and pick the chunks up at once. A separate pool (Python
threads, numba's ``workqueue`` layer) would instead compete for the cores with those spinning workers: measured,
it made whole renders no faster (``docs/performance.md``).

Rules (:func:`kernel_threads`):

- the count follows torch's (``torch.get_num_threads()``, capped by numba's ``NUMBA_NUM_THREADS``): ``--threads 1``
  means one thread for the kernels too;
- a forked child of a process that has launched a parallel kernel runs the serial kernels: GNU OpenMP is not
  fork-safe, and numba's OpenMP layer terminates such a child on its first launch;
- under another numba threading layer than OpenMP (``tbb`` when installed, ``workqueue`` when no OpenMP is found)
  the parallel kernels are not used after the first launch: those pools fight torch's for the cores, and
  ``workqueue`` is neither fork- nor thread-safe.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import torch

MIN_ITEMS = 4096  # below this many pixels or triangles a kernel runs serially: starting threads costs more
_work = threading.local()  # per calling thread: {kernel name: (layout, scratch arrays)}
_launch_pid: int | None = None  # the process that first launched a parallel kernel
_disabled = False  # numba chose a threading layer the parallel kernels should not use


def kernel_threads(items: int) -> int:
    """Number of chunks for a parallel compiled kernel over ``items`` pixels or triangles; 1 means: run the
    serial kernel."""
    n = torch.get_num_threads()
    if n <= 1 or items < MIN_ITEMS or _disabled or (_launch_pid is not None and _launch_pid != os.getpid()):
        return 1
    import numba

    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def launched() -> None:
    """Record that a parallel kernel has run in this process (call after each launch; cheap after the first)."""
    global _launch_pid, _disabled
    if _launch_pid is None:
        import numba

        _launch_pid = os.getpid()
        _disabled = numba.threading_layer() != "omp"


def work_arrays(name: str, layout: tuple[tuple[tuple[int, ...], np.dtype | type], ...]) -> list[np.ndarray]:
    """Scratch arrays ``(shape, dtype)`` for a parallel kernel's per-thread buffers, kept between calls per calling
    thread and per ``name`` (one set each: another layout replaces it); contents arbitrary.

    Reused rather than allocated per call: arrays a kernel's worker thread allocates come from that thread's
    malloc arena, which hands them back to the system on free, so every call page-faults them in again (about a
    thousand faults per sphere render's shading backward, more than the split saves)."""
    store = getattr(_work, "store", None)
    if store is None:
        store = _work.store = {}
    hit = store.get(name)
    if hit is None or hit[0] != layout:
        hit = store[name] = (layout, [np.empty(shape, dtype) for shape, dtype in layout])
    return hit[1]
