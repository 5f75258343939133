"""Serving: SavedModel export, a drop-in tensorflow_model_server, and a client."""
import os as _os

# TensorFlow runtime settings of the model server and the training binaries (whose evaluation runs the same Monte
# Carlo computations), as environment variables: TensorFlow reads each one when it first needs it (the allocator
# at the first op), so `apply_runtime_defaults` must run before any op does; the packages `training` and the
# server's `run` call it first thing.
RUNTIME_DEFAULTS = {
    # TensorFlow's pooling (BFC) allocator for CPU tensors instead of malloc. Under malloc a tensor over glibc's
    # mmap limit (32 MiB at most) is mapped fresh for every op and unmapped after it, so each of its pages costs a
    # page fault and a zeroing in every call, and the posterior predictive's [S, batch, units] tensors are such
    # tensors at large batches (docs/performance.md#the-cpu-allocator-and-tf_cpu_bfc_mem_limit_in_mb). The pool
    # keeps what it has mapped, so the process stays at its peak memory; TF_CPU_BFC_MEM_LIMIT_IN_MB caps the pool,
    # and a request needing more then fails with RESOURCE_EXHAUSTED instead of meeting the OOM killer.
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


def apply_runtime_defaults() -> None:
    """Sets each of `RUNTIME_DEFAULTS` that the environment does not already set (the user's value wins)."""
    for name, value in RUNTIME_DEFAULTS.items():
        _os.environ.setdefault(name, value)
