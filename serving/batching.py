"""Server-side batching: concurrent requests merged into one signature run.

With `--enable_batching`, TF Serving wraps each model's session in a `BatchingSession`: a
request's tensors become a *task*; tasks that run the same signature are appended to an open
batch until it holds `max_batch_size` rows or `batch_timeout_micros` has passed since its first
task arrived; `num_batch_threads` threads run ready batches, concatenating every input along the
0th dimension and splitting every output back. A queue holds at most `max_enqueued_batches`
batches (the open one included); a task that would need one more is refused. With
`allowed_batch_sizes`, a batch is padded (by repeating its first row) up to the next allowed size.

This module reproduces that scheme with one difference, chosen deliberately: a request TF
Serving's batching cannot merge correctly -- an input without a batch dimension, such as
`predict_mc`'s scalar `num_samples` or its `seed` of shape [2] -- runs on its own instead of being
rejected or mis-concatenated (see `is_batchable`). Tasks are only merged with tasks whose inputs
have the same dtypes and the same non-batch shapes, so one odd request cannot fail the others.

A full queue is answered as TF Serving's scheduler answers it: UNAVAILABLE, "The batch scheduling
queue to which this task was submitted is full; currently N batches enqueued and
max_enqueued_batches is M" (clients retry UNAVAILABLE); a task larger than `max_batch_size`:
INVALID_ARGUMENT, "Task size X is larger than maximum input batch size Y".
"""

import collections
import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from serving import errors

# TF Serving's `port::NumSchedulableCPUs()` / `MaxParallelism()`: the CPUs this process may run on (its affinity
# mask; fewer than the machine's in a pinned container). The server's thread-count defaults use it too.
SCHEDULABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclasses.dataclass
class BatchingOptions:
    """`BatchingParameters`, with TF Serving's defaults (`BasicBatchScheduler::Options`)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = SCHEDULABLE_CPUS
    allowed_batch_sizes: Sequence[int] = ()

    def validate(self):
        if self.max_batch_size < 1:
            raise errors.InvalidArgument("max_batch_size must be positive")
        if self.num_batch_threads < 1:
            raise errors.InvalidArgument("num_batch_threads must be positive")
        if self.max_enqueued_batches < 1:
            raise errors.InvalidArgument("max_enqueued_batches must be positive")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(sizes):
                raise errors.InvalidArgument("allowed_batch_sizes entries must be monotonically "
                                             "increasing")
            if sizes[-1] != self.max_batch_size:
                raise errors.InvalidArgument("Last entry in allowed_batch_sizes must match "
                                             "max_batch_size; last entry was "
                                             f"{sizes[-1]}; expected {self.max_batch_size}")


def is_batchable(signature_def, arrays: Dict[str, np.ndarray]) -> bool:
    """Whether a request can be merged with others: every input has a batch dimension.

    The signature must declare dimension 0 of every input as unknown (-1) -- or leave the rank
    unknown, as the tf.Example input of Classify/Regress does -- and the request's tensors must
    all have at least one dimension, of the same size.
    """
    for info in signature_def.inputs.values():
        shape = info.tensor_shape
        if not shape.unknown_rank and (not shape.dim or shape.dim[0].size != -1):
            return False
    sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
    return len(sizes) == 1 and None not in sizes


class _Task:
    __slots__ = ("feeds", "size", "deadline", "done", "outputs", "error")

    def __init__(self, feeds: Dict[str, np.ndarray], size: int, deadline: Optional[float]):
        self.feeds = feeds
        self.size = size
        self.deadline = deadline  # time.monotonic() by which the request wants its answer; None: no deadline
        # Held until the task's batch ends; its waiter blocks acquiring it. A bare lock is the cheapest hand-off
        # Python has (an Event adds a Condition and its lock on both sides).
        self.done = threading.Lock()
        self.done.acquire()
        self.outputs: Optional[List[np.ndarray]] = None
        self.error: Optional[BaseException] = None


class _Batch:
    __slots__ = ("tasks", "size", "start", "closed")

    def __init__(self):
        self.tasks: List[_Task] = []
        self.size = 0
        self.start = time.monotonic()
        self.closed = False


class _Queue:
    def __init__(self, run_fn):
        self.run_fn = run_fn
        self.batches = collections.deque()


class BatchScheduler:
    """Shared by all models: one queue per (model version, signature, input layout).

    Args:
      options: `BatchingOptions`.
      on_queue_change: called (under the scheduler's lock) with the number of rows waiting in
        all queues whenever it changes; the server exports it as a gauge.
    """

    def __init__(self, options: BatchingOptions,
                 on_queue_change: Optional[Callable[[int], None]] = None):
        options.validate()
        self._options = options
        self._on_queue_change = on_queue_change
        self._enqueued_rows = 0
        self._queues: Dict[tuple, _Queue] = {}
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._stopped = False
        self._threads = [threading.Thread(target=self._worker, name=f"batch_thread_{i}",
                                          daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key: tuple, run_fn: Callable[[Dict[str, np.ndarray], int, Optional[float]], List[np.ndarray]],
            feeds: Dict[str, np.ndarray], timeout: Optional[float] = None) -> List[np.ndarray]:
        """Runs `feeds` as part of a batch and returns this request's rows of every output.

        Deadlines as TF Serving's batching session keeps them: the caller waits for its batch, and the batch's
        run gets the latest deadline of its tasks as its timeout (none if one of them has none); a batch whose
        every task's deadline passed while it queued is not run, and each of its tasks fails with
        RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching queue".

        Args:
          key: identifies the queue; tasks with equal keys may be merged.
          run_fn: runs one merged batch: (feeds, batch size, timeout in seconds or None) -> outputs.
          feeds: tensor name -> array, all with the same 0th dimension.
          timeout: seconds from now the request wants its answer in (a gRPC deadline's remainder or the REST
            timeout), None for none.
        """
        size = next(iter(feeds.values())).shape[0]
        if size == 0:
            # Nothing to merge, and an all-empty batch could not be padded to an allowed size.
            return run_fn(feeds, 0, timeout)
        max_size = self._options.max_batch_size
        if size > max_size:
            raise errors.InvalidArgument(
                f"Task size {size} is larger than maximum input batch size {max_size}")
        task = _Task(feeds, size, None if timeout is None else time.monotonic() + timeout)
        with self._lock:
            if self._stopped:
                raise errors.Unavailable("The batch scheduler is stopping")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(run_fn)
            open_batch = queue.batches[-1] if queue.batches and not queue.batches[-1].closed else None
            # Batch threads are woken only when what they wait for changes: a new batch (its timeout starts) or
            # a batch that became ready. A task joining an open batch that is not yet full wakes no one: waking a
            # thread (a futex call, and on a VM an interrupt to another CPU) costs more than the rest of the
            # enqueueing, and a request that pays one more hand-off gains less from sharing a session run.
            wake = False
            if open_batch is None or open_batch.size + size > max_size:
                if len(queue.batches) >= self._options.max_enqueued_batches:
                    raise errors.Unavailable(
                        "The batch scheduling queue to which this task was submitted is full; currently "
                        f"{len(queue.batches)} batches enqueued and max_enqueued_batches is "
                        f"{self._options.max_enqueued_batches}")
                if open_batch is not None:
                    open_batch.closed = True
                open_batch = _Batch()
                queue.batches.append(open_batch)
                wake = True
            open_batch.tasks.append(task)
            open_batch.size += size
            self._queue_changed(size)
            if open_batch.size == max_size:
                open_batch.closed = True
                wake = True
            if wake:
                self._work.notify()
        task.done.acquire()  # every batch ends: its run is bounded by its tasks' deadlines
        if task.error is not None:
            raise task.error
        return task.outputs

    def _queue_changed(self, delta: int):
        self._enqueued_rows += delta
        if self._on_queue_change is not None:
            self._on_queue_change(self._enqueued_rows)

    def _next_ready(self):
        """The queue and batch to run next (oldest ready first), or (None, seconds to wait)."""
        timeout = self._options.batch_timeout_micros / 1e6
        now = time.monotonic()
        best, wait = None, None
        for key, queue in self._queues.items():
            if not queue.batches:
                continue
            batch = queue.batches[0]
            ready_at = batch.start + timeout
            if batch.closed or len(queue.batches) > 1 or ready_at <= now:
                if best is None or batch.start < best[1].start:
                    best = (key, batch)
            else:
                wait = ready_at - now if wait is None else min(wait, ready_at - now)
        if best is None:
            return None, wait
        key, batch = best
        queue = self._queues[key]
        queue.batches.popleft()
        self._queue_changed(-batch.size)
        if not queue.batches:
            del self._queues[key]
        return (queue, batch), None

    def _worker(self):
        while True:
            with self._lock:
                while True:
                    if self._stopped:
                        return
                    ready, wait = self._next_ready()
                    if ready is not None:
                        break
                    self._work.wait(wait)
            queue, batch = ready
            self._process(queue.run_fn, batch)

    def _process(self, run_fn, batch: _Batch):
        tasks = batch.tasks
        try:
            now = time.monotonic()
            deadlines = [task.deadline for task in tasks]
            if all(deadline is not None and deadline <= now for deadline in deadlines):
                raise errors.ResourceExhausted("Run() timeout exceeded while waiting in batching queue")
            timeout = None if None in deadlines else max(deadlines) - now
            names = list(tasks[0].feeds)
            merged = {n: np.concatenate([t.feeds[n] for t in tasks]) if len(tasks) > 1
                      else tasks[0].feeds[n] for n in names}
            padded = batch.size
            for allowed in self._options.allowed_batch_sizes:
                if allowed >= batch.size:
                    padded = allowed
                    break
            if padded > batch.size:
                # TF Serving pads with copies of the first row; they are dropped after the run.
                extra = padded - batch.size
                merged = {n: np.concatenate([a, np.repeat(a[:1], extra, axis=0)])
                          for n, a in merged.items()}
            outputs = run_fn(merged, padded, timeout)
            for output in outputs:
                if np.ndim(output) == 0 or output.shape[0] != padded:
                    raise errors.FailedPrecondition(
                        "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                        "dimension sizes of the input tensors")
            offset = 0
            for task in tasks:
                task.outputs = [o[offset:offset + task.size] for o in outputs]
                offset += task.size
        except BaseException as exc:  # pylint: disable=broad-except
            # Every task of a failed batch gets the error; the thread lives on.
            if not isinstance(exc, Exception):
                logging.exception("Batch failed")
            for task in tasks:
                task.error = exc
        finally:
            for task in tasks:
                task.done.release()

    def stop(self):
        with self._lock:
            self._stopped = True
            pending = [b for q in self._queues.values() for b in q.batches]
            self._queues.clear()
            self._work.notify_all()
        for batch in pending:
            for task in batch.tasks:
                task.error = errors.Unavailable("The batch scheduler is stopping")
                task.done.release()
        for thread in self._threads:
            thread.join(timeout=5)
