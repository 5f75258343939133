"""The gRPC servicers: decode, call the data plane (`serving/data_plane.py`), encode. Nothing else.

Every RPC goes through `_rpc`, the one place where a `ServingError` becomes a gRPC status.
"""

import functools
from typing import Optional

from absl import logging
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import errors
from serving.data_plane import DataPlane


def _model_name_of(request) -> str:
    if hasattr(request, "model_spec"):
        return request.model_spec.name
    if hasattr(request, "tasks") and request.tasks:
        return request.tasks[0].model_spec.name
    return ""


def _rpc(api: str):
    """Runs a servicer method under admission control and maps every error to a gRPC status.

    This wrapper is the only place a `ServingError` (or any other exception, which becomes
    INTERNAL or keeps its TensorFlow code) turns into a status: a request can fail, the server
    cannot.
    """
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            try:
                with self._plane.admit(_model_name_of(request), api, "GRPC"):
                    return method(self, request, context)
            except Exception as exc:  # pylint: disable=broad-except
                error = errors.to_serving_error(exc)
                if isinstance(error, errors.Internal):
                    logging.exception("%s failed", api)
                context.abort(errors.grpc_status(error.code), errors.wire_message(error))
        return wrapper
    return decorate


def _timeout(context) -> Optional[float]:
    """The call's remaining deadline in seconds (None: no deadline)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e8 else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService`."""

    def __init__(self, plane: DataPlane, enforce_session_run_timeout: bool = True):
        """`enforce_session_run_timeout` (TF Serving's flag): a call's deadline times out its session run."""
        self._plane = plane
        self._enforce = enforce_session_run_timeout

    def _timeout(self, context) -> Optional[float]:
        return _timeout(context) if self._enforce else None

    @_rpc("Predict")
    def Predict(self, request, context):  # noqa: N802 (gRPC method names)
        return self._plane.predict(request, self._timeout(context))

    @_rpc("Classify")
    def Classify(self, request, context):  # noqa: N802
        return self._plane.classify(request, self._timeout(context))

    @_rpc("Regress")
    def Regress(self, request, context):  # noqa: N802
        return self._plane.regress(request, self._timeout(context))

    @_rpc("MultiInference")
    def MultiInference(self, request, context):  # noqa: N802
        return self._plane.multi_inference(request, self._timeout(context))

    @_rpc("GetModelMetadata")
    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._plane.get_model_metadata(request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService`."""

    def __init__(self, plane: DataPlane):
        self._plane = plane

    @_rpc("GetModelStatus")
    def GetModelStatus(self, request, context):  # noqa: N802
        return self._plane.get_model_status(request)

    @_rpc("HandleReloadConfigRequest")
    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        response, error = self._plane.reload_config(request)
        if error is not None:
            # Like TF Serving: the status is in the body, and the RPC fails with it too.
            context.set_code(errors.grpc_status(error.code))
            context.set_details(errors.wire_message(error))
        return response


def add_servicers(server, plane: DataPlane, enforce_session_run_timeout: bool = True):
    """Registers both services on a `grpc.Server`."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(plane, enforce_session_run_timeout), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(plane), server)
