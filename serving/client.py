r"""A Python client and a command line for vizoo's predictive SavedModels over gRPC.

    python -m serving.client --server=localhost:8500 --model_name=bnn --csv=rows.csv
    python -m serving.client --server=localhost:8500 --model_name=bnn --csv=rows.csv \
        --num_samples=200 --seed=1,2 --json

The two Predict signatures of our regression exports that it calls (the contract `serving/export.py` writes;
the exports also have `regress`, `model_info` and, for mean-field networks, `predict_moments`):

* `serving_default`: input `x` float32 [batch, features];
* `predict_mc`: inputs `x`, `num_samples` (int32 scalar) and `seed` (int32 [2]), for a Monte
  Carlo estimate with a chosen number of samples, reproducible for a given seed;

both answering `mean`, `stddev`, `aleatoric_stddev`, `epistemic_stddev`, `lower`, `upper`, each
float32 [batch, outputs] (a classifier's: `probabilities` [batch, classes] and their entropy decomposition), and
`input_distance` [batch, 1], how many training standard deviations the row's farthest feature
(`input_distance_feature`) lies from the training mean (a table classifier's too, [batch]).
The command line reads the export's `model_info` first: a model trained on a table (`--dataset=csv:PATH`) takes
the CSV's columns by header name, and a classifier's rows are printed with its class names. Each row's input
distance is printed against the training rows' own (`model_info`'s percentiles): `rare` beyond 99.9% of them,
`extrapolating` beyond all of them. The client works
with any Predict signature, though: `predict` sends
numpy arrays and returns a numpy array per output. It talks to stock `tensorflow_model_server`
and to `serving.server` alike.
"""

import csv
import io
import json
import sys
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
MC_SIGNATURE = "predict_mc"
MODEL_INFO_SIGNATURE = "model_info"
PREDICTIVE_OUTPUTS = ("mean", "stddev", "aleatoric_stddev", "epistemic_stddev", "lower", "upper")
# The training rows' percentiles (model_info) beyond which a row is rare, and extrapolating.
RARE_PERCENTILE, EXTRAPOLATING_PERCENTILE = "99.9", "100"


class ClientError(Exception):
    """A request failed. `code` is the gRPC status code name, `details` the server's message."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class ModelNotFoundError(ClientError):
    """No such model or version is loaded (NOT_FOUND)."""


class InvalidRequestError(ClientError):
    """The server refused the request as malformed (INVALID_ARGUMENT, FAILED_PRECONDITION)."""


class ServerOverloadedError(ClientError):
    """The server is full or the message too large (RESOURCE_EXHAUSTED); retry later or smaller."""


class DeadlineExceededError(ClientError):
    """No answer within the timeout (DEADLINE_EXCEEDED)."""


class ServerUnavailableError(ClientError):
    """The server cannot be reached, is shutting down, or its batching queue is full (UNAVAILABLE, as TF Serving
    answers all three); retry later."""


_ERRORS_BY_CODE = {
    "NOT_FOUND": ModelNotFoundError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "FAILED_PRECONDITION": InvalidRequestError,
    "RESOURCE_EXHAUSTED": ServerOverloadedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "UNAVAILABLE": ServerUnavailableError,
}


def _client_error(rpc_error) -> ClientError:
    code = rpc_error.code().name if rpc_error.code() is not None else "UNKNOWN"
    return _ERRORS_BY_CODE.get(code, ClientError)(code, rpc_error.details() or "")


class PredictiveClient:
    """Calls a model's signatures over gRPC with numpy arrays in and out.

    Args:
      server: "host:port" of a TF Serving compatible server.
      model_name: the model to call.
      version: a specific version (default: the latest loaded).
      version_label: a version label such as "stable" (exclusive with `version`).
      timeout: seconds per call, unless a call gives its own.
      max_message_bytes: largest message sent or received.
      channel: an existing `grpc.Channel` (then `server` is ignored), e.g. a secure one.
    """

    def __init__(self, server: str, model_name: str, version: Optional[int] = None,
                 version_label: Optional[str] = None, timeout: float = 10.0,
                 max_message_bytes: int = 64 * 1024 * 1024, channel=None):
        import grpc  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import model_service_pb2_grpc  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

        if version is not None and version_label:
            raise ValueError("give a version or a version label, not both")
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.timeout = timeout
        self._grpc = grpc
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(server, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._own_channel:
            self._channel.close()

    def _fill_spec(self, spec, signature_name: Optional[str] = None):
        spec.name = self.model_name
        if signature_name is not None:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except self._grpc.RpcError as exc:
            raise _client_error(exc) from None

    def predict(self, inputs: Union[np.ndarray, Mapping[str, np.ndarray]],
                signature_name: str = DEFAULT_SIGNATURE,
                output_filter: Optional[Sequence[str]] = None,
                timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """Runs a Predict signature.

        Args:
          inputs: input alias -> array; a bare array is sent as input `x`.
          signature_name: the signature to run.
          output_filter: outputs to return (default: all).
          timeout: seconds, overriding the client's default.

        Returns:
          output alias -> array (float32 [batch, outputs] for our predictive signatures).

        Raises:
          ClientError (or a subclass naming the failure) when the server refuses the call.
        """
        from serving import codec  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

        if not isinstance(inputs, Mapping):
            inputs = {"x": inputs}
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, signature_name)
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(codec.ndarray_to_tensor_proto(
                np.asarray(value), use_tensor_content=True))
        request.output_filter.extend(output_filter or ())
        response = self._call(self._predictions.Predict, request, timeout)
        return {alias: codec.tensor_proto_to_ndarray(tensor, alias)
                for alias, tensor in response.outputs.items()}

    def predict_mc(self, x: np.ndarray, num_samples: int, seed: Sequence[int] = (0, 0),
                   timeout: Optional[float] = None, signature_name: str = MC_SIGNATURE) -> Dict[str, np.ndarray]:
        """The `predict_mc` signature: a `num_samples`-sample estimate, reproducible by `seed`.

        `signature_name="predict_moments"` asks a mean-field network for its moment-propagation approximation,
        which takes the same inputs.
        """
        return self.predict({"x": np.asarray(x, np.float32),
                             "num_samples": np.asarray(num_samples, np.int32),
                             "seed": np.asarray(seed, np.int32).reshape(2)},
                            signature_name=signature_name, timeout=timeout)

    def signatures(self, timeout: Optional[float] = None) -> Dict[str, dict]:
        """The model's signatures: name -> {"inputs": {alias: (dtype, shape)}, "outputs": ...}."""
        from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=import-outside-toplevel

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._fill_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self._predictions.GetModelMetadata, request, timeout)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)

        def describe(infos):
            return {alias: (types_pb2.DataType.Name(info.dtype),
                            None if info.tensor_shape.unknown_rank
                            else [d.size for d in info.tensor_shape.dim])
                    for alias, info in infos.items()}

        return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs),
                       "method_name": sig.method_name}
                for name, sig in defs.signature_def.items()}

    def model_info(self, timeout: Optional[float] = None) -> Optional[dict]:
        """The export's `model_info` (family, data set, a table's feature names in order, its target and classes,
        and `input_distance`: its definition and `training_percentiles`, the percentiles "50", "90", "99", "99.9",
        "100" of the training rows' own distances, for `input_region`), or None for a model without that signature
        (one vizoo did not export)."""
        if MODEL_INFO_SIGNATURE not in self.signatures(timeout):
            return None
        outputs = self.predict({}, signature_name=MODEL_INFO_SIGNATURE, timeout=timeout)
        info = outputs["info"]
        return json.loads(info.item() if isinstance(info, np.ndarray) else info)

    def status(self, timeout: Optional[float] = None) -> Dict[int, str]:
        """Version -> state name ("AVAILABLE", "LOADING", "END", ...)."""
        from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        response = self._call(self._models.GetModelStatus, request, timeout)
        return {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
                for s in response.model_version_status}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def read_csv_rows(text: str, features: Optional[Sequence[str]] = None) -> np.ndarray:
    """Feature rows from CSV text, float32 [rows, features].

    With `features` (the model's column names in order, from its `model_info`) the first row must be a header,
    and the columns are taken by name: in any order, other columns (the target, an id) ignored, a missing one an
    error naming it. Without, the columns are taken in order and a non-numeric header is skipped.
    """
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if features:
        if not rows:
            raise ValueError("the CSV is empty: expected a header row naming the columns, then data rows")
        header = [c.strip() for c in rows[0]]
        missing = [f for f in features if f not in header]
        if missing:
            raise ValueError(f"the CSV lacks column(s) {', '.join(map(repr, missing))} that the model takes; "
                             f"its features are {', '.join(map(repr, features))}, the CSV's header has "
                             f"{', '.join(map(repr, header))}")
        columns = [header.index(f) for f in features]
        rows = [[r[j] if j < len(r) else "" for j in columns] for r in rows[1:]]
        names = list(features)
    else:
        if rows:
            try:
                [float(c) for c in rows[0]]
            except ValueError:
                rows = rows[1:]
        names = None
    if not rows:
        raise ValueError("the CSV has no data rows")
    values = np.empty([len(rows), len(rows[0])], np.float32)
    for i, row in enumerate(rows):
        if len(row) != values.shape[1]:
            raise ValueError(f"CSV data row {i + 1} has {len(row)} values where the first has {values.shape[1]}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                where = f"column {names[j]!r}" if names else f"column {j + 1}"
                raise ValueError(f"CSV data row {i + 1}, {where}: {cell!r} is not a number") from None
    return values


def input_region(distance: float, info: Optional[Mapping]) -> Optional[str]:
    """Where an input distance falls among the training rows' own (`info`: model_info's `input_distance`):
    "typical", "rare" (beyond 99.9% of them) or "extrapolating" (beyond every one); None without the reference."""
    percentiles = (info or {}).get("training_percentiles")
    if not percentiles:
        return None
    if distance > percentiles[EXTRAPOLATING_PERCENTILE]:
        return "extrapolating"
    return "rare" if distance > percentiles[RARE_PERCENTILE] else "typical"


def summarize(outputs: Dict[str, np.ndarray], classes: Optional[Sequence[str]] = None,
              info: Optional[Mapping] = None) -> list:
    """Per-row dicts: a regression's predictive outputs that are present (lists over output dims), or a
    classifier's predicted class and class probabilities (by the class names `classes` when given); with the input
    distance when the model answers it: `input_distance`, `input_distance_feature` (an index;
    `input_distance_feature_name` by `info`'s features) and `input_region` (see `input_region`). `info` is the
    export's model_info."""
    if "probabilities" in outputs:
        probabilities = np.asarray(outputs["probabilities"], np.float64)
        names = list(classes) if classes else [str(k) for k in range(probabilities.shape[-1])]
        rows = []
        for i, p in enumerate(probabilities):
            row = {"row": i, "class": names[int(np.argmax(p))],
                   "probabilities": {name: float(v) for name, v in zip(names, p)}}
            for name in ("predictive_entropy", "mutual_information"):
                if name in outputs:
                    row[name] = float(np.asarray(outputs[name])[i])
            rows.append(row)
    else:
        mean = outputs.get("mean")
        if mean is None:
            mean = next(iter(outputs.values()))
        rows = []
        for i in range(np.shape(mean)[0]):
            row = {"row": i}
            for name in PREDICTIVE_OUTPUTS:
                value = mean if name == "mean" else outputs.get(name)
                if value is not None:
                    row[name] = np.atleast_1d(np.asarray(value[i], np.float64)).tolist()
            rows.append(row)
    if "input_distance" in outputs:
        _add_input_distance(rows, outputs, info or {})
    return rows


def _add_input_distance(rows: list, outputs: Dict[str, np.ndarray], info: Mapping):
    distances = np.asarray(outputs["input_distance"], np.float64).reshape(len(rows))
    features = outputs.get("input_distance_feature")
    features = None if features is None else np.asarray(features).reshape(len(rows))
    names = info.get("features")
    for i, row in enumerate(rows):
        row["input_distance"] = float(distances[i])
        if features is not None:
            row["input_distance_feature"] = int(features[i])
            if names:
                row["input_distance_feature_name"] = names[int(features[i])]
        region = input_region(row["input_distance"], info.get("input_distance"))
        if region is not None:
            row["input_region"] = region


def format_rows(rows: list, info: Optional[Mapping] = None) -> str:
    """Human-readable lines: mean ± stddev [lower, upper] per output dimension, or the predicted class and the
    class probabilities; then the input distance, and for a rare or extrapolating row the feature and the training
    rows' reference (from `info`, the export's model_info)."""
    lines = []
    for row in rows:
        if "probabilities" in row:
            probabilities = ", ".join(f"{name} {p:.4f}" for name, p in row["probabilities"].items())
            line = f"row {row['row']}: {row['class']} ({probabilities})"
        else:
            parts = []
            for j, mean in enumerate(row["mean"]):
                text = f"{mean:.6g}"
                if "stddev" in row:
                    text += f" ± {row['stddev'][j]:.4g}"
                if "lower" in row and "upper" in row:
                    text += f" [{row['lower'][j]:.6g}, {row['upper'][j]:.6g}]"
                parts.append(text)
            line = f"row {row['row']}: " + "; ".join(parts)
        if "input_distance" in row:
            line += "; " + _distance_text(row, info or {})
        lines.append(line)
    return "\n".join(lines)


def _distance_text(row: dict, info: Mapping) -> str:
    """E.g. "input distance 1.2 sd", or for an unusual row "input distance 60.1 sd in 'F7': extrapolating
    (training rows reach 54.4)"."""
    text = f"input distance {row['input_distance']:.3g} sd"
    region = row.get("input_region")
    if region not in ("rare", "extrapolating"):
        return text
    feature = row.get("input_distance_feature_name", row.get("input_distance_feature"))
    if feature is not None:
        text += f" in {feature!r}" if isinstance(feature, str) else f" in feature {feature}"
    percentiles = (info.get("input_distance") or {}).get("training_percentiles")
    if not percentiles:
        return f"{text}: {region}"
    if region == "extrapolating":
        return text + f": extrapolating (training rows reach {percentiles[EXTRAPOLATING_PERCENTILE]:.3g})"
    return text + f": rare (99.9% of training rows within {percentiles[RARE_PERCENTILE]:.3g})"


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel

    flags.DEFINE_string("server", "localhost:8500", "host:port of the model server (gRPC).")
    flags.DEFINE_string("model_name", None, "Model to call.")
    flags.DEFINE_integer("model_version", None, "A specific version (default: latest).")
    flags.DEFINE_string("version_label", None, "A version label, e.g. stable.")
    flags.DEFINE_string("csv", None, "CSV file of feature rows ('-' for stdin). A model trained on a table takes "
                        "its columns by header name (any order; other columns ignored).")
    flags.DEFINE_string("signature_name", DEFAULT_SIGNATURE,
                        "Signature to run; --num_samples or --seed switch the default to predict_mc "
                        "(or name predict_moments, which takes the same inputs).")
    flags.DEFINE_integer("num_samples", None, "Monte Carlo samples (uses predict_mc).")
    flags.DEFINE_list("seed", None, "Two integers, e.g. 1,2 (uses predict_mc).")
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for the answer.")
    flags.DEFINE_bool("json", False, "Print JSON (one object per row) instead of text.")
    flags.mark_flag_as_required("model_name")
    flags.mark_flag_as_required("csv")
    return flags.FLAGS


def main(argv, flag_values) -> int:
    """Reads the CSV, calls the server, prints one line (or JSON object) per row."""
    del argv
    try:
        if flag_values.csv == "-":
            text = sys.stdin.read()
        else:
            with open(flag_values.csv, "r", encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    use_mc = flag_values.num_samples is not None or flag_values.seed is not None
    with PredictiveClient(flag_values.server, flag_values.model_name,
                          version=flag_values.model_version,
                          version_label=flag_values.version_label,
                          timeout=flag_values.timeout) as client:
        try:
            info = client.model_info() or {}
        except ClientError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
        try:
            x = read_csv_rows(text, info.get("features"))
        except ValueError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        try:
            if use_mc:
                seed = [int(s) for s in (flag_values.seed or ["0", "0"])]
                if len(seed) != 2:
                    raise ValueError("--seed takes two integers")
                # --signature_name=predict_moments takes the same inputs as predict_mc.
                signature = (MC_SIGNATURE if flag_values.signature_name == DEFAULT_SIGNATURE
                             else flag_values.signature_name)
                outputs = client.predict_mc(x, flag_values.num_samples or 100, seed, signature_name=signature)
            else:
                outputs = client.predict(x, signature_name=flag_values.signature_name)
        except (ClientError, ValueError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
    rows = summarize(outputs, info.get("classes"), info)
    sys.stdout.write((json.dumps(rows) if flag_values.json else format_rows(rows, info)) + "\n")
    return 0


def run():
    """Console script `vizoo-client`."""
    from absl import app  # pylint: disable=import-outside-toplevel

    flag_values = _define_flags()
    app.run(lambda argv: main(argv, flag_values))


if __name__ == "__main__":
    run()
