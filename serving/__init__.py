"""Serving: SavedModel export, a drop-in tensorflow_model_server, and a client."""
import os as _os

# TensorFlow runtime settings of the model server and the training binaries (whose evaluation runs the same Monte
# Carlo computations), as environment variables: TensorFlow reads each one when it first needs it (the allocator
# at the first op), so `apply_runtime_defaults` must run before any op does; the packages `training` and the
# server's `run` call it first thing.
RUNTIME_DEFAULTS = {
    # TensorFlow's pooling (BFC) allocator for CPU tensors instead of malloc. A tensor over glibc's mmap limit
    # (32 MiB at most) is mapped fresh for every op and unmapped after it, so each of its pages costs a page
    # fault and a zeroing in every call: relu over a [100, 1024, 100] float32 tensor takes 24 ms with malloc and
    # 4.5 ms from the pool here, and the posterior predictive's [S, batch, units] tensors are such tensors at
    # batch 1024 (README, "Posterior predictive latency"; `train_bnn` on MNIST, 50 steps and then the evaluation of
    # the 10,000 test images at S = 100, took 46 s instead of 92 s). The pool keeps what it has mapped, so the
    # process stays at its peak memory; TF_CPU_BFC_MEM_LIMIT_IN_MB caps the pool, and a request needing more then
    # fails with RESOURCE_EXHAUSTED instead of meeting the OOM killer.
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


def apply_runtime_defaults() -> None:
    """Sets each of `RUNTIME_DEFAULTS` that the environment does not already set (the user's value wins)."""
    for name, value in RUNTIME_DEFAULTS.items():
        _os.environ.setdefault(name, value)
