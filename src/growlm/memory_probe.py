"""Peak memory of a window of work (a training step, a stage), activations included.

`PeakMemory(device)` is a context manager (or `start()`/`stop()` pair). After the window it
holds three numbers, in bytes, and the name of the method that produced them:

- `baseline_bytes`: what was live when the window opened;
- `peak_bytes`: the most that was live at any moment inside the window, baseline included;
- `end_bytes`: what was live when the window closed, baseline included.

`peak_above_baseline_bytes` is the difference between the first two: the window's own
transient and retained allocations (activations, gradients, logits, optimizer state created
there).

How each device is measured (`method`):

- ``"cuda_allocator"``: torch.cuda's caching-allocator statistics. The baseline is
  `memory_allocated` at entry; the peak is `max_memory_allocated` after resetting the
  device's peak statistics at entry (that reset is process-wide for the device).
- ``"cpu_allocator_events"``: torch's CPU allocator reports every allocation and free to
  the profiler when memory profiling is on (`torch.profiler.profile(profile_memory=True)`),
  each event carrying the allocator's running total. The peak above baseline is the largest
  running total minus the total before the first event, so it is exact for everything torch
  allocates on the profiled thread and on the autograd threads the profiler follows: eager
  ops, their backward, a compiled graph's kernels, buffers a kernel allocates for itself, and
  the optimizer. The baseline is the sum of the distinct CPU storages of all tensors reachable
  from Python at entry (parameters, gradients, optimizer state, buffers, batches), counted
  after a garbage collection.
- ``"process_rss"``: the fallback when the profiler is already running (profilers do not
  nest): the kernel's peak resident set size, reset at entry through `/proc/self/clear_refs`;
  the baseline is the resident size at entry. It counts the whole process (interpreter,
  libraries, the C allocator's free lists), and pages only once they are touched.
  ``"process_rss_lifetime"`` is the same without a reset, where `/proc` is missing: the
  process's peak since it started.

Why the profiler on CPU: a `TorchDispatchMode` that tracks storages through weak references
sees only operators dispatched from Python, so it misses what a compiled graph or a kernel
allocates internally, and costs Python work on every operator; the resident set size mixes in
the C allocator's caching and everything that is not a tensor. The profiler sees the
allocator itself. Its cost is a few microseconds per operator, which was within run-to-run
noise for one training step of a 4-layer model on 2 cores.

Limits of the CPU method, both documented by torch: a block allocated outside any profiled
window and freed inside this one is not reported (the allocator did not record its size), so
`peak_bytes` may overstate by such frees; open a window where nothing old is about to be
freed, such as the start of a step. And the allocator logs one warning for the first such free
of the process. Kineto (the profiler's backend) prints a "profiler_start"/"profiler_stop"
line at its highest log level on every window; unless `KINETO_LOG_LEVEL` is already set, the
first probe sets it to 6, above that level, so a training log stays clean. It must be set
before the profiler's first use in the process to take effect.
"""

from __future__ import annotations

import gc
import os
import re
import resource
import sys
from pathlib import Path

import torch

_QUIET_KINETO = "6"  # kineto's highest message level is 5 ("USDT"); 6 silences its per-window lines
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def live_tensor_bytes(device_type: str = "cpu") -> int:
    """Bytes of the distinct storages, on `device_type`, of all tensors reachable from Python.

    Views share their base's storage and are counted once. Tensors held only by C++ (a live
    autograd graph's saved tensors, for instance) are not reachable and not counted. Cost: one
    pass over `gc.get_objects()`, about 0.1 s in a process with 300k objects.
    """
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        # issubclass on the type: isinstance would read `__class__`, which some lazily
        # deprecated module attributes turn into a warning.
        if not issubclass(type(obj), torch.Tensor):
            continue
        try:
            storage = obj.untyped_storage()
            if storage.device.type != device_type or storage.nbytes() == 0:
                continue
            ptr = storage.data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):
            # wrapper subclasses (DTensor) own no storage (their local shard is counted); the
            # tensors torch.compile's tracing leaves behind refuse their data pointer
            continue
        storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())
    return sum(storages.values())


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _rss_resettable() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak resident set size (VmHWM)
        return _STATUS.is_file()
    except OSError:
        return False


def _lifetime_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """Peak of live bytes on `device` during a window; see the module docstring for methods.

    Usage::

        with PeakMemory("cpu") as probe:
            loss = model(tokens, labels); loss.backward(); opt.step()
        probe.peak_bytes, probe.baseline_bytes, probe.method

    Raises ValueError for a device type other than cpu or cuda, and RuntimeError when `stop`
    comes before `start`. Leaves computed values untouched: it only observes the allocator.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"PeakMemory measures cpu or cuda, not {self.device.type}")
        self.method = ""
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.end_bytes = 0
        self._profiler = None
        self._running = False

    @property
    def peak_above_baseline_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> PeakMemory:
        if self._running:
            raise RuntimeError("PeakMemory.start called twice without stop")
        if self.device.type == "cuda":
            self.method = "cuda_allocator"
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = int(torch.cuda.memory_allocated(self.device))
        elif not torch.autograd._profiler_enabled():
            self.method = "cpu_allocator_events"
            # Unreachable cycles holding tensors would count in the baseline, then be freed
            # unseen inside the window: collect them first.
            gc.collect()
            self.baseline_bytes = live_tensor_bytes("cpu")
            os.environ.setdefault("KINETO_LOG_LEVEL", _QUIET_KINETO)
            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        elif _rss_resettable():
            self.method = "process_rss"
            self.baseline_bytes = _status_kib("VmRSS")
        else:
            self.method = "process_rss_lifetime"
            self.baseline_bytes = _lifetime_peak_rss()
        self._running = True
        return self

    def stop(self) -> PeakMemory:
        if not self._running:
            raise RuntimeError("PeakMemory.stop called before start")
        self._running = False
        if self.method == "cuda_allocator":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.end_bytes = int(torch.cuda.memory_allocated(self.device))
        elif self.method == "cpu_allocator_events":
            profiler, self._profiler = self._profiler, None
            profiler.__exit__(None, None, None)
            peak, end = _allocator_totals(profiler)
            self.peak_bytes = self.baseline_bytes + peak
            self.end_bytes = self.baseline_bytes + end
        elif self.method == "process_rss":
            self.peak_bytes = _status_kib("VmHWM")
            self.end_bytes = _status_kib("VmRSS")
        else:
            self.peak_bytes = self.end_bytes = _lifetime_peak_rss()
        return self

    def __repr__(self) -> str:
        return (f"PeakMemory({self.device}, method={self.method!r}, baseline={self.baseline_bytes}, "
                f"peak={self.peak_bytes}, end={self.end_bytes})")


def _allocator_totals(profiler) -> tuple[int, int]:
    """(peak, end) of the CPU allocator's running total, relative to its value at entry.

    Each allocation event carries the total after it, computed under the allocator's lock, so
    the maximum needs no ordering; only the first and last events (for the starting and final
    totals) are found by time.
    """
    allocation = torch._C._profiler._EventType.Allocation
    events = []
    stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == allocation and event.extra_fields.device.type == "cpu":
            events.append(event)
    if not events:
        return 0, 0
    events.sort(key=lambda e: e.start_time_ns)
    first, last = events[0].extra_fields, events[-1].extra_fields
    before = first.total_allocated - first.alloc_size
    peak = max(e.extra_fields.total_allocated for e in events)
    return max(peak - before, 0), last.total_allocated - before
