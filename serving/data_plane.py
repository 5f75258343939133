"""The data plane: what every API does, for the REST API and the gRPC servicers alike.

`DataPlane` implements TF Serving's request handling on protos -- `predict_util.cc`, `classifier.cc`,
`regressor.cc`, `multi_inference.cc`, `get_model_metadata_impl.cc`, `get_model_status_impl.cc`,
`model_service_impl.cc` -- with the same checks in the same order and the same messages, plus this server's own
limits. The REST API (`serving/rest.py`) and the gRPC servicers (`serving/servicer.py`) both call it, so a request
fails the same way whichever door it comes in by.
"""

import dataclasses
import threading
import time
from typing import Dict, List, Optional

from absl import logging
import numpy as np
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2

from serving import batching
from serving import codec
from serving import errors
from serving.model_manager import ModelManager


DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"
# The input name whose value bounds the work of a Monte Carlo signature (`predict_mc`).
NUM_SAMPLES_INPUT = "num_samples"


@dataclasses.dataclass
class Limits:
    """This server's own limits, which keep one request from taking the process down.

    Attributes:
      max_num_samples: largest value of a scalar integer input named `num_samples`.
      max_batch_rows: largest 0th dimension of any input (examples, for Classify/Regress).
      max_sample_rows: largest `num_samples` times rows in one request.
      max_tensor_bytes: largest decoded size of one input tensor.
      max_concurrent_requests: requests processed at once, gRPC and REST together.
    """

    max_num_samples: int = 10000
    max_batch_rows: int = 10000
    max_sample_rows: int = 1_000_000
    max_tensor_bytes: int = 64 * 1024 * 1024
    max_concurrent_requests: int = 64


def _signature_name(model_spec) -> str:
    return model_spec.signature_name or DEFAULT_SIGNATURE


def _set_model_spec(target, name: str, signature_name: Optional[str], version: int):
    """`MakeModelSpec`: the model spec a response reports (signature resolved to its name)."""
    target.Clear()
    target.name = name
    if signature_name is not None:
        target.signature_name = signature_name or DEFAULT_SIGNATURE
    target.version.value = version


def _debug_string(message) -> str:
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
    return text_format.MessageToString(message)


def _sorted_keys(mapping) -> str:
    return ",".join(sorted(mapping))


def _dtype_enum_name(array: np.ndarray) -> str:
    """`DataType_Name`: DT_DOUBLE for a float64 array."""
    from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
    return types_pb2.DataType.Name(codec.datatype_of(array))


def _require_model_spec(request) -> None:
    """Predict, Classify, Regress, GetModelMetadata and GetModelStatus refuse a request without a `model_spec`
    before they look for a servable (`predict_impl.cc`, `classification_service.cc`, ...)."""
    if not request.HasField("model_spec"):
        raise errors.InvalidArgument("Missing ModelSpec")


def _input_size_error(sent: set, expected: set) -> errors.InvalidArgument:
    """`VerifyRequestInputsSize`'s message."""
    return errors.InvalidArgument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{_sorted_keys(sent)}}}) != len({{{_sorted_keys(expected)}}}). Sent extra: "
        f"{{{_sorted_keys(sent - expected)}}}. Missing but required: "
        f"{{{_sorted_keys(expected - sent)}}}.")


# The calls TF Serving's request_count and request_latency metrics record.
_COUNTED_APIS = frozenset({"Predict", "Classify", "Regress"})


class _Admission:
    """`DataPlane.admit`'s context: a class rather than a generator, as it wraps every request."""

    __slots__ = ("_slots", "_metrics", "_limit", "_model_name", "_api", "_entrypoint", "_start")

    def __init__(self, slots, metrics, limit: int, model_name: str, api: str, entrypoint: str):
        self._slots, self._metrics, self._limit = slots, metrics, limit
        self._model_name, self._api, self._entrypoint = model_name, api, entrypoint

    def __enter__(self):
        if not self._slots.acquire(blocking=False):
            if self._metrics is not None:
                self._metrics.rejected.inc("max_concurrent_requests")
            raise errors.ResourceExhausted(
                "Too many requests in flight: this server processes at most "
                f"{self._limit} at once (--max_concurrent_requests)")
        self._start = time.monotonic()
        if self._metrics is not None:
            self._metrics.inflight.inc()
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._slots.release()
        metrics = self._metrics
        if metrics is not None:
            metrics.inflight.dec()
            if self._api in _COUNTED_APIS:
                code = errors.Code.OK if exc is None else errors.to_serving_error(exc).code
                metrics.request_count.inc(self._model_name, errors.code_name(code))
                if code == errors.Code.OK:
                    metrics.request_latency.observe((time.monotonic() - self._start) * 1e6, self._model_name,
                                                    self._api, self._entrypoint)
        return False


class DataPlane:
    """Predict, Classify, Regress, MultiInference, metadata, status and reload on protos.

    Args:
      manager: the `ModelManager` holding the loaded versions.
      limits: `Limits`.
      batcher: a `BatchScheduler` when batching is enabled, else None.
      method_name_check: reject signatures whose `method_name` does not match the API, as
        `--enable_signature_method_name_check` does in TF Serving (off by default there too,
        because native TF2 exports use the predict method name for every signature).
      metrics: `monitoring.Metrics` or None.
      tensor_content: Predict outputs as `tensor_content` bytes instead of typed value fields
        (`--enable_serialization_as_tensor_content`).
    """

    def __init__(self, manager: ModelManager, limits: Limits, batcher=None,
                 method_name_check: bool = False, metrics=None, tensor_content: bool = False):
        self.manager = manager
        self._tensor_content = tensor_content
        self.limits = limits
        self._batcher = batcher
        self._method_name_check = method_name_check
        self._metrics = metrics
        self._slots = threading.BoundedSemaphore(max(limits.max_concurrent_requests, 1))

    # ------------------------------------------------------------ admission and accounting

    def admit(self, model_name: str = "", api: str = "", entrypoint: str = "GRPC") -> "_Admission":
        """Holds one request slot (`with plane.admit(...):`); refuses the request when all are taken (overload).

        Also records TF Serving's request metrics, as its PredictionService does: Predict, Classify and Regress
        are counted under their final status, and their latency is recorded when they succeed (status and
        metadata calls, and MultiInference, are not counted).
        """
        return _Admission(self._slots, self._metrics, self.limits.max_concurrent_requests, model_name, api,
                          entrypoint)

    # ------------------------------------------------------------ running signatures

    def _check_limits(self, arrays: Dict[str, np.ndarray]):
        num_samples, rows = None, 1
        for alias, array in arrays.items():
            if alias == NUM_SAMPLES_INPUT and array.size == 1 and array.dtype.kind in "iu":
                num_samples = int(array.reshape(-1)[0])
                if num_samples > self.limits.max_num_samples:
                    raise errors.InvalidArgument(
                        f"num_samples={num_samples} is larger than this server's limit "
                        f"--max_num_samples={self.limits.max_num_samples}")
            if array.ndim:
                if array.shape[0] > self.limits.max_batch_rows:
                    raise errors.InvalidArgument(
                        f"Input {alias} has {array.shape[0]} rows, more than this server's limit "
                        f"--max_batch_rows={self.limits.max_batch_rows}")
                rows = max(rows, array.shape[0])
        # Monte Carlo signatures hold [num_samples, rows, units] activations: bound the product,
        # which the two limits above alone would let reach 10^8 and exhaust memory.
        if num_samples is not None and num_samples * rows > self.limits.max_sample_rows:
            raise errors.InvalidArgument(
                f"num_samples * rows = {num_samples} * {rows} is larger than this server's limit "
                f"--max_sample_rows={self.limits.max_sample_rows}")

    def _run(self, loaded, signature_name: str, signature_def, arrays: Dict[str, np.ndarray],
             fetch_names: List[str], timeout: Optional[float]) -> List[np.ndarray]:
        """Runs one signature: input alias -> array in, fetched tensors out (batched if on)."""
        self._check_limits(arrays)
        feeds = {signature_def.inputs[alias].name: array for alias, array in arrays.items()}
        if self._batcher is not None and batching.is_batchable(signature_def, arrays):
            key = (id(loaded), loaded.version, signature_name, tuple(sorted(feeds)),
                   tuple(fetch_names),
                   tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items())))

            def run_batch(merged, batch_size, batch_timeout, loaded=loaded):
                return loaded.run(signature_name, merged, fetch_names, batch_size, batch_timeout)

            return self._batcher.run(key, run_batch, feeds, timeout)
        rows = next((a.shape[0] for a in arrays.values() if a.ndim), 1)
        return loaded.run(signature_name, feeds, fetch_names, rows, timeout)

    # ------------------------------------------------------------ Predict

    def predict(self, request, timeout: Optional[float] = None):
        """`Predict` (`predict_util.cc`): run a signature on named tensors."""
        _require_model_spec(request)
        with self.manager.servable(request.model_spec) as loaded:
            return self.predict_on(loaded, request, timeout)

    def predict_on(self, loaded, request, timeout: Optional[float] = None):
        signature_name = _signature_name(request.model_spec)
        if signature_name not in loaded.signature_defs:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        signature = loaded.signature_defs[signature_name]
        response = predict_pb2.PredictResponse()
        _set_model_spec(response.model_spec, request.model_spec.name or loaded.name,
                        signature_name, loaded.version)
        if self._method_name_check and signature.method_name not in (
                PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise errors.Internal(
                "Expected prediction signature method_name to be one of {"
                f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: "
                f"{signature.method_name}")
        sent, expected = set(request.inputs), set(signature.inputs)
        if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
            raise _input_size_error(sent, expected)
        # `saved_model::GetInputValues`: each signature input from the request, else from the signature's
        # defaults; then every request input must have been one of them.
        arrays = {}
        for alias in sorted(expected):
            if alias in sent:
                proto = request.inputs[alias]
            elif alias in signature.defaults:
                proto = signature.defaults[alias]
            else:
                raise errors.InvalidArgument(
                    f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in "
                    f"request and no default value provided. Inputs expected to be in the request "
                    f"{{{_sorted_keys(sent)}}}, or default input alias set: {_sorted_keys(signature.defaults)}")
            arrays[alias] = codec.tensor_proto_to_ndarray(proto, alias, self.limits.max_tensor_bytes)
        if sent - expected:
            raise errors.InvalidArgument(
                f"Inputs contains invalid name. Used request inputs: {_sorted_keys(sent & expected)}, "
                f"request input: {_sorted_keys(sent)}")
        aliases = []
        for alias in request.output_filter:
            if alias not in signature.outputs:
                raise errors.InvalidArgument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be "
                    f"in the set {{{_sorted_keys(signature.outputs)}}}.")
            if alias in aliases:
                raise errors.InvalidArgument(f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        if not aliases:
            aliases = sorted(signature.outputs)
        fetches = [signature.outputs[a].name for a in aliases]
        outputs = self._run(loaded, signature_name, signature, arrays, fetches, timeout)
        if len(outputs) != len(aliases):
            raise errors.Unknown("Predict internal error")
        for alias, value in zip(aliases, outputs):
            codec.fill_tensor_proto(response.outputs[alias], value, self._tensor_content)
        return response

    # ------------------------------------------------------------ Classify / Regress

    @staticmethod
    def _signature_for(loaded, model_spec):
        """Classify's and Regress's signature lookup (its method name is checked later)."""
        signature_name = _signature_name(model_spec)
        if signature_name not in loaded.signature_defs:
            raise errors.InvalidArgument(f"No signature was found with the name: {signature_name}")
        return signature_name, loaded.signature_defs[signature_name]

    def _examples(self, input_proto, model_name: str) -> np.ndarray:
        examples = codec.input_to_serialized_examples(input_proto)
        if self._metrics is not None:
            self._metrics.request_example_counts.observe(len(examples), model_name)
        return examples

    def _classification_io(self, signature):
        """`PreProcessClassification`: the input tensor and the classes/scores outputs."""
        if self._method_name_check and signature.method_name != CLASSIFY_METHOD:
            raise errors.InvalidArgument(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: "
                f"{signature.method_name}")
        if len(signature.inputs) != 1:
            raise errors.InvalidArgument("Expected one input Tensor.")
        if len(signature.outputs) not in (1, 2):
            raise errors.InvalidArgument(
                f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if "inputs" not in signature.inputs:
            raise errors.FailedPrecondition(
                f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
        if "classes" not in signature.outputs and "scores" not in signature.outputs:
            raise errors.FailedPrecondition(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {_debug_string(signature)}')
        fetches = [signature.outputs[k].name for k in ("classes", "scores")
                   if k in signature.outputs]
        return signature.inputs["inputs"].name, fetches

    def _regression_io(self, signature):
        """`PreProcessRegression`: the input tensor and the `outputs` tensor."""
        if self._method_name_check and signature.method_name != REGRESS_METHOD:
            raise errors.InvalidArgument(
                f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: "
                f"{signature.method_name}")
        if len(signature.inputs) != 1:
            raise errors.InvalidArgument("Expected one input Tensor.")
        if len(signature.outputs) != 1:
            raise errors.InvalidArgument("Expected one output Tensor.")
        if "inputs" not in signature.inputs:
            raise errors.FailedPrecondition(
                f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
        if "outputs" not in signature.outputs:
            raise errors.FailedPrecondition(
                f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
        return signature.inputs["inputs"].name, [signature.outputs["outputs"].name]

    @staticmethod
    def _classification_result(signature, num_examples, fetch_names, outputs, result):
        """`PostProcessClassificationResult`: checks shapes and builds the classes."""
        by_name = dict(zip(fetch_names, outputs))
        classes = by_name.get(signature.outputs["classes"].name) if "classes" in signature.outputs else None
        scores = by_name.get(signature.outputs["scores"].name) if "scores" in signature.outputs else None
        for tensor, what, kind in ((classes, "classes", "DT_STRING"), (scores, "scores", "DT_FLOAT")):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise errors.InvalidArgument(
                    "Expected Tensor shape: [batch_size num_classes] but got "
                    f"[{','.join(str(d) for d in tensor.shape)}]")
            ok = tensor.dtype == object if kind == "DT_STRING" else tensor.dtype == np.float32
            if not ok:
                raise errors.InvalidArgument(
                    f"Expected {what} Tensor of {kind}. Got: {_dtype_enum_name(tensor)}")
            if tensor.shape[0] != num_examples:
                raise errors.InvalidArgument(
                    f"Expected {what} output batch size of {num_examples}. Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise errors.InvalidArgument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}")
        num_classes = (classes if classes is not None else scores).shape[1]
        for i in range(num_examples):
            classifications = result.classifications.add()
            for c in range(num_classes):
                entry = classifications.classes.add()
                if classes is not None:
                    label = classes[i, c]
                    entry.label = (label.decode("utf-8", errors="replace")
                                   if isinstance(label, bytes) else str(label))
                if scores is not None:
                    entry.score = float(scores[i, c])

    @staticmethod
    def _regression_result(num_examples, output, result):
        """`PostProcessRegressionResult`: one float per example."""
        if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
            raise errors.InvalidArgument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
                f"got [{','.join(str(d) for d in output.shape)}]")
        if output.shape[0] != num_examples:
            raise errors.InvalidArgument(
                "Input batch size did not match output batch size: "
                f"{num_examples} vs. {output.shape[0]}")
        if output.dtype != np.float32:
            raise errors.InvalidArgument(
                f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(output)}")
        for value in output.reshape(-1):
            result.regressions.add().value = float(value)

    def classify(self, request, timeout: Optional[float] = None):
        """`Classify`: tf.Examples in, (label, score) pairs out."""
        _require_model_spec(request)
        with self.manager.servable(request.model_spec) as loaded:
            return self.classify_on(loaded, request, timeout)

    def classify_on(self, loaded, request, timeout: Optional[float] = None):
        signature_name, signature = self._signature_for(loaded, request.model_spec)
        input_name, fetches = self._classification_io(signature)
        examples = self._examples(request.input, loaded.name)
        outputs = self._run(loaded, signature_name, signature,
                            {_alias_of(signature, input_name): examples}, fetches, timeout)
        response = classification_pb2.ClassificationResponse()
        _set_model_spec(response.model_spec, request.model_spec.name or loaded.name,
                        signature_name, loaded.version)
        self._classification_result(signature, len(examples), fetches,
                                    [np.asarray(o) for o in outputs], response.result)
        return response

    def regress(self, request, timeout: Optional[float] = None):
        """`Regress`: tf.Examples in, one float per example out."""
        _require_model_spec(request)
        with self.manager.servable(request.model_spec) as loaded:
            return self.regress_on(loaded, request, timeout)

    def regress_on(self, loaded, request, timeout: Optional[float] = None):
        signature_name, signature = self._signature_for(loaded, request.model_spec)
        input_name, fetches = self._regression_io(signature)
        examples = self._examples(request.input, loaded.name)
        outputs = self._run(loaded, signature_name, signature,
                            {_alias_of(signature, input_name): examples}, fetches, timeout)
        response = regression_pb2.RegressionResponse()
        _set_model_spec(response.model_spec, request.model_spec.name or loaded.name,
                        signature_name, loaded.version)
        self._regression_result(len(examples), np.asarray(outputs[0]), response.result)
        return response

    # ------------------------------------------------------------ MultiInference

    def multi_inference(self, request, timeout: Optional[float] = None):
        """`MultiInference`: several Classify/Regress signatures over one set of examples."""
        model_spec = request.tasks[0].model_spec if request.tasks else predict_pb2.PredictRequest().model_spec
        with self.manager.servable(model_spec) as loaded:
            return self.multi_inference_on(loaded, request, timeout)

    def multi_inference_on(self, loaded, request, timeout: Optional[float] = None):
        """As TF Serving's `multi_inference.cc`: the tasks' signatures may read the examples through different input
        tensors (a TF2 export gives each signature its own); the serialized examples feed every one of them in one
        run that fetches all the tasks' outputs."""
        model_name, input_names, seen, fetch_set = "", set(), set(), set()
        plans = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise errors.InvalidArgument("Found ModelSpec with an empty model name.")
            if model_name and task.model_spec.name != model_name:
                raise errors.InvalidArgument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            model_name = task.model_spec.name
            signature_name = _signature_name(task.model_spec)
            if signature_name in seen:
                raise errors.InvalidArgument(f"Duplicate evaluation of signature: {signature_name}")
            seen.add(signature_name)
            if signature_name not in loaded.signature_defs:
                raise errors.InvalidArgument(
                    f"Requested signature not found in model graph: {signature_name}")
            signature = loaded.signature_defs[signature_name]
            if task.method_name == CLASSIFY_METHOD:
                name, fetches = self._classification_io(signature)
            elif task.method_name == REGRESS_METHOD:
                name, fetches = self._regression_io(signature)
            else:
                raise errors.Unimplemented(f"Unsupported signature method_name: {task.method_name}")
            input_names.add(name)
            fetch_set.update(fetches)
            plans.append((task, signature_name, signature))
        if not plans:
            raise errors.InvalidArgument("MultiInferenceRequest must specify at least one task")
        examples = self._examples(request.input, loaded.name)
        fetch_names = sorted(fetch_set)
        first_signature = plans[0][2]
        if len(input_names) == 1:
            outputs = self._run(loaded, plans[0][1], first_signature,
                                {_alias_of(first_signature, next(iter(input_names))): examples}, fetch_names, timeout)
        else:  # one run feeding several signatures' inputs: not one signature's batch, so never merged with others
            self._check_limits({"inputs": examples})
            outputs = loaded.run(plans[0][1], {name: examples for name in sorted(input_names)}, fetch_names,
                                 len(examples), timeout)
        outputs = [np.asarray(o) for o in outputs]
        response = inference_pb2.MultiInferenceResponse()
        for task, signature_name, signature in plans:
            result = response.results.add()
            _set_model_spec(result.model_spec, model_name, signature_name, loaded.version)
            if task.method_name == CLASSIFY_METHOD:
                self._classification_result(signature, len(examples), fetch_names, outputs,
                                            result.classification_result)
            else:
                output = dict(zip(fetch_names, outputs))[signature.outputs["outputs"].name]
                self._regression_result(len(examples), output, result.regression_result)
        return response

    # ------------------------------------------------------------ metadata, status, reload

    def get_model_metadata(self, request):
        """`GetModelMetadata`: the SignatureDefs of the MetaGraphDef, in an Any."""
        _require_model_spec(request)
        if not request.metadata_field:
            raise errors.InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                # TF Serving passes a printf pattern to a concatenating error constructor, so its clients read
                # the field glued to an unformatted "%s" pattern: kept, as they may match on it.
                raise errors.InvalidArgument(f"Metadata field %s is not supported{field}")
        with self.manager.servable(request.model_spec) as loaded:
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in loaded.signature_defs.items():
                signature_defs.signature_def[name].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = loaded.name
            response.model_spec.version.value = loaded.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
            return response

    def get_model_status(self, request):
        """`GetModelStatus`: the state of one or all versions of a model."""
        _require_model_spec(request)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.status(spec.name, version):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = int(status.state)
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
        return response

    def reload_config(self, request):
        """`HandleReloadConfigRequest`: returns (response, error or None).

        The response carries the status in its body *and* the RPC fails with it, as TF Serving
        does.
        """
        response = model_management_pb2.ReloadConfigResponse()
        error = None
        if request.config.WhichOneof("config") != "model_config_list":
            error = errors.InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported")
        else:
            for index, config in enumerate(request.config.model_config_list.config):
                logging.info("Config entry index: %d path: %s name: %s platform: %s", index,
                             config.base_path, config.name, config.model_platform)
            try:
                self.manager.reload_config(request.config)
            except Exception as exc:  # pylint: disable=broad-except
                error = errors.to_serving_error(exc)
        if error is not None:
            logging.error("ReloadConfig failed: %s", error.message)
            response.status.error_code = int(error.code)
            response.status.error_message = error.message
        return response, error

    def input_dtypes(self, model_spec, signature_name: str) -> Dict[str, int]:
        """REST's `GetInfoMap`: input alias -> DataType of the signature a request names."""
        with self.manager.servable(model_spec) as loaded:
            name = signature_name or DEFAULT_SIGNATURE
            if name not in loaded.signature_defs:
                raise errors.InvalidArgument(
                    f'Serving signature name: "{name}" not found in signature def')
            return {alias: info.dtype for alias, info in loaded.signature_defs[name].inputs.items()}


def _alias_of(signature, tensor_name: str) -> str:
    for alias, info in signature.inputs.items():
        if info.name == tensor_name:
            return alias
    raise errors.Internal(f"No input of the signature is fed by {tensor_name}")
