"""Device selection: CUDA when present (bf16 autocast), else the CPU."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU raises a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available here; use --device cpu or auto")
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


CPU_THREAD_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
"""Environment for the OpenMP runtime (libgomp / Intel's) that :func:`configure_cpu_threads` applies.
Read when the runtime starts, i.e. at ``import torch``: set it before (``cpu_thread_env`` in a launcher,
or call :func:`configure_cpu_threads` first thing, before anything imports torch in a fresh process)."""


def cpu_thread_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) plus :data:`CPU_THREAD_POLICY`, for launching a process."""
    import os

    env = dict(os.environ if base is None else base)
    env.update(CPU_THREAD_POLICY)
    return env


def configure_cpu_threads(num_threads: int | None = None, interop_threads: int = 1) -> dict[str, object]:
    """Set the CPU thread policy of an interactive process (the app, the report) and return what was set.

    Why: on a shared machine a neighbour often keeps every core busy. OpenMP's default is to *spin*
    waiting workers for a while after each parallel region; with as many workers as cores and a busy
    neighbour, the spinning threads and the neighbour take turns on the cores, and every one of the
    thousands of small parallel regions of a forward pass waits for its slowest (descheduled) worker:
    a 2-thread forward slows 3-10x. Workers that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``,
    ``KMP_BLOCKTIME=0``) give the cores back between regions and degrade gracefully, at a small cost
    on a quiet machine. ``bench/bench_threads.py`` measures the policies (thread count x wait policy,
    with and without a 2-core busy loop) and is where the choice comes from.

    Args:
        num_threads: intra-op threads; None = ``torch.get_num_threads()`` (the physical cores torch found).
        interop_threads: inter-op pool size (a forward pass runs its ops in order, so 1 is enough and
            avoids one more pool of spinning threads); only settable before the first parallel op, so
            a failure to set it is ignored.

    The wait policy is an environment variable of the OpenMP runtime, read once when it starts: this
    sets it in ``os.environ`` (effective for child processes, and for this one only when torch has not
    been imported yet). For the running process, launch it with :func:`cpu_thread_env`.
    """
    import os

    effective = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"  # as the runtime read it at start
    for k, v in CPU_THREAD_POLICY.items():
        os.environ.setdefault(k, v)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    with contextlib.suppress(RuntimeError):  # the inter-op pool has already started
        torch.set_num_interop_threads(int(interop_threads))
    return {
        "num_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "wait_policy_effective": effective,
    }


MALLOC_SETTINGS = {"mmap_threshold": 4 * 2**20, "arena_max": 2, "trim_threshold": 64 * 2**20}
"""glibc malloc settings of the app (:func:`tune_malloc`; ``STRUCTTOKEN_MALLOC`` overrides them, see
:func:`malloc_settings`): ``mmap_threshold`` = bytes above which an allocation gets its own mmap,
``arena_max`` = most malloc arenas (glibc: 8 per core), ``trim_threshold`` = free bytes at the top of a heap
above which glibc returns them to the system. 0 leaves an entry to glibc; glibc adapts the mmap threshold
(and the trim threshold with it, at twice that) only while neither is set, so
``mmap_threshold=0,arena_max=0,trim_threshold=0`` is glibc's own behaviour, and with ``mmap_threshold`` set
alone the trim threshold stays at glibc's 128 KB.

Measured on one 2-core machine (2026-12-02), embedded set, 480x360: with 256 KB (the setting before) every
activation of the forward was a fresh mmap, faulted in page by page: ``analyze()`` of a new image in a
worker thread 0.85 s against 0.48 s with 4 MB / 2 arenas (0.44-0.53 s with glibc's adaptive threshold);
``bench/bench_app.py --total 200``: RSS growth from request 10 to 200 68 MB (256 KB), 139 MB (adaptive,
2 arenas), 65 MB (4 MB, 2 arenas; flat from request 50 on); 8 clients x 5 requests 38.9 / 28.7 / 26.0 s.
On another 2-core machine (2026-12-03, AMD EPYC) 4 MB / 2 arenas with the fixed 128 KB trim threshold was
the slowest setting: each activation freed at the top of the heap went back to the system and was faulted
in again by the next; ``bench/bench_analyze.py --repeats 6``, new image / control change, two runs each:
glibc's defaults 0.487 / 0.411 s and 0.070 / 0.055 s, 4 MB / 2 arenas 0.531 / 0.527 s and 0.083 / 0.082 s,
the same with a 64 MB trim threshold 0.449 / 0.379 s and 0.054 / 0.052 s (256 MB: 0.416 / 0.454 s)."""

# M_MMAP_THRESHOLD, M_ARENA_MAX, M_TRIM_THRESHOLD in glibc's malloc.h
_MALLOPT = {"mmap_threshold": -3, "arena_max": -8, "trim_threshold": -1}


def malloc_settings(spec: str | None = None) -> dict[str, int]:
    """:data:`MALLOC_SETTINGS`, overridden by ``spec`` (default: the environment's ``STRUCTTOKEN_MALLOC``),
    e.g. ``"mmap_threshold=0,arena_max=2"``, which is how ``bench/bench_app.py --malloc`` tries others."""
    import os

    spec = os.environ.get("STRUCTTOKEN_MALLOC", "") if spec is None else spec
    out = dict(MALLOC_SETTINGS)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        if key not in out or not value.strip().isdigit():
            raise ValueError(f"STRUCTTOKEN_MALLOC: expected name=bytes/count with names {sorted(out)}, got {item!r}")
        out[key] = int(value)
    return out


def tune_malloc(settings: dict[str, int] | None = None) -> bool:
    """glibc only: apply ``settings`` (default :func:`malloc_settings`; zero entries keep glibc's default).

    ``mmap_threshold``: serve every allocation above it with its own mmap, returned to the system when
    freed. By default glibc raises that threshold as big buffers come and go, and the image-sized arrays
    of concurrent requests then fragment the heaps of the worker threads. ``arena_max``: fewer arenas, so
    a buffer freed by one worker thread can serve the next request's. ``trim_threshold``: keep up to that many
    free bytes at the top of a heap rather than return them to the system (glibc's fixed default of 128 KB
    returns each freed activation, and the next one is faulted in again). ``bench/bench_app.py`` measures the
    server's RSS over many requests, ``bench/bench_analyze.py`` the latency each setting costs (an mmap'd
    buffer is faulted in page by page on every use, so a low threshold slows the forward: see
    :data:`MALLOC_SETTINGS`). Returns whether every nonzero setting was applied."""
    import sys

    settings = malloc_settings() if settings is None else settings
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(_MALLOPT[k], int(v))) for k, v in settings.items() if v)
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


def release_memory(full_collect: bool = True) -> bool:
    """Collect garbage and hand the allocator's free pages back to the system (glibc ``malloc_trim(0)``).

    Why: a refused or evicted model set is freed by the garbage collector, but glibc keeps the freed pages in
    its heaps (measured, issue 24: RSS 3.35 GB after a refused ``depth: 3000`` upload, 0.76 GB only after
    ``malloc_trim(0)``). Called after every failed load and every eviction from the Explorer's model cache.
    ``full_collect=False`` collects only the youngest generation (a full collection costs ~0.2 s with torch
    and gradio loaded; a refused load frees its tensors by reference counting, with no cycle to break).
    Returns whether the pages were trimmed (False off glibc: musl, macOS, Windows, where this only collects)."""
    import gc
    import sys

    gc.collect() if full_collect else gc.collect(0)
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _single_threaded_worker() -> None:
    torch.set_num_threads(1)
    # torch sets a thread up on its first op from the *process-wide* count, which the creator restores
    # below: take this thread's count now, while it reads 1
    torch.get_num_threads()
    _IN_POOL.active = True


def in_single_threaded_pool() -> bool:
    """Whether the calling thread is a worker of a :func:`single_threaded_pool` (which must not wait on its own
    pool: a caller there runs the work itself)."""
    return getattr(_IN_POOL, "active", False)


def single_threaded_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads that each run torch with one intra-op thread (one pool per size,
    created on first use, all its threads started before it is returned).

    For independent pieces of CPU work that parallelise poorly inside (the heads of a set on a small feature
    grid, the report's metrics): two single-threaded workers keep both cores busy where two-thread ops on small
    tensors mostly wait. ``torch.set_num_threads`` is process-wide for threads that have not run an op yet, so
    the workers set theirs first and the caller's count is then restored for every thread started later.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            before = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="torch-1-thread", initializer=_single_threaded_worker)
            barrier = threading.Barrier(workers)
            list(pool.map(lambda _: barrier.wait(), range(workers)))  # every worker started and set up
            torch.set_num_threads(before)
            _POOLS[workers] = pool
    return pool


def head_workers() -> int:
    """Workers for a set's heads in an interactive CPU process (:meth:`structtoken.Segmentor.set_head_workers`):
    ``STRUCTTOKEN_HEAD_WORKERS`` if set (1 = the heads in turn), else ``min(2, torch.get_num_threads())`` (measured
    on 2 cores; with many cores one head on all of them may beat several heads on one each)."""
    import os

    value = os.environ.get("STRUCTTOKEN_HEAD_WORKERS", "").strip()
    if not value:
        return min(2, torch.get_num_threads())
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"STRUCTTOKEN_HEAD_WORKERS: expected a count >= 1, got {value!r}")
    return int(value)
