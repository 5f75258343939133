"""vizoo: variational inference model zoo."""
import os as _os

# tfp.layers is built on Keras 2; this must be set before TensorFlow is first imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import serving as _serving  # noqa: E402  (sets environment variables only; imports no TensorFlow)

# TensorFlow reads the allocator's settings at its first op: a training process takes the server's before any.
_serving.apply_runtime_defaults()
