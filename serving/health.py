"""The standard gRPC health-checking service (`grpc.health.v1.Health`), for `--enable_grpc_healthcheck_service`.

tensorflow_model_server's help for that flag says "Enable the standard gRPC healthcheck service."; this module
answers as gRPC's default health-check service (C++ `EnableDefaultHealthCheckService`) does, which is what such a
flag turns on in a C++ gRPC server (how TF Serving wires it was not confirmed from its sources), so load
balancers, Kubernetes gRPC probes and `grpc_health_probe` get the answers that service gives:

* `Check(service="")` (the server as a whole) answers SERVING from start-up until shutdown begins, then
  NOT_SERVING. The default service reports no per-service statuses, so any other name answers the RPC status
  NOT_FOUND ("service name unknown"); the server's models are not health-check services (their state is
  `GetModelStatus`'s).
* `Watch(service)` streams the current status (SERVICE_UNKNOWN for an unknown name) and then each change, until the
  client cancels or the server stops. A watch holds one of the server's worker threads while it is open, so at
  most `max_watchers` are open at once; more answer RESOURCE_EXHAUSTED instead of starving Predict of threads.

The messages are declared here in a private descriptor pool with health.proto's names and field numbers (the same
bytes on the wire), so no package beyond grpcio is needed.
"""

from __future__ import annotations

import threading

import grpc

SERVICE_NAME = "grpc.health.v1.Health"
# HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3
# How often a Watch stream re-checks that its client is still there while nothing changes.
_WATCH_POLL_SECONDS = 1.0


def _message_classes():
    """(HealthCheckRequest, HealthCheckResponse) classes: message grpc.health.v1.HealthCheckRequest {string service
    = 1;} and HealthCheckResponse {ServingStatus status = 1;} as in grpc's health.proto."""
    from google.protobuf import descriptor_pb2  # pylint: disable=import-outside-toplevel
    from google.protobuf import descriptor_pool  # pylint: disable=import-outside-toplevel
    from google.protobuf import message_factory  # pylint: disable=import-outside-toplevel

    fdp = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(name="vizoo/grpc_health_v1.proto", package="grpc.health.v1",
                                                    syntax="proto3")
    request = file_proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    response = file_proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", UNKNOWN), ("SERVING", SERVING), ("NOT_SERVING", NOT_SERVING),
                         ("SERVICE_UNKNOWN", SERVICE_UNKNOWN)):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=fdp.TYPE_ENUM, label=fdp.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file_proto.SerializeToString())
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
                 for name in ("HealthCheckRequest", "HealthCheckResponse"))


HealthCheckRequest, HealthCheckResponse = _message_classes()


class HealthService:
    """Statuses by service name ("" = the whole server), the two RPCs, and shutdown."""

    def __init__(self, max_watchers: int = 8):
        self._statuses = {"": SERVING}
        self._changed = threading.Condition()
        self._shut_down = False
        self._watchers = threading.BoundedSemaphore(max(1, max_watchers))

    def status(self, service: str) -> int:
        with self._changed:
            return self._statuses.get(service, SERVICE_UNKNOWN)

    def set(self, service: str, status: int):
        """Sets a service's status; ignored once shutdown has begun (as gRPC's default service does)."""
        with self._changed:
            if not self._shut_down:
                self._statuses[service] = status
                self._changed.notify_all()

    def shutdown(self):
        """Every known service becomes NOT_SERVING for good; open watches send that and end."""
        with self._changed:
            self._statuses = {name: NOT_SERVING for name in self._statuses}
            self._shut_down = True
            self._changed.notify_all()

    def check(self, request, context):
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            context.abort(grpc.StatusCode.NOT_FOUND, "service name unknown")
        return HealthCheckResponse(status=status)

    def watch(self, request, context):
        if not self._watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watches are open")
        try:
            last = None
            while context.is_active():
                with self._changed:
                    status = self._statuses.get(request.service, SERVICE_UNKNOWN)
                    if status == last and not self._shut_down:
                        self._changed.wait(_WATCH_POLL_SECONDS)
                        continue
                    done = self._shut_down
                if status != last:
                    yield HealthCheckResponse(status=status)
                    last = status
                if done:
                    return
        finally:
            self._watchers.release()

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handler for `grpc.Server.add_generic_rpc_handlers`."""
        serialize = HealthCheckResponse.SerializeToString
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check, request_deserializer=HealthCheckRequest.FromString, response_serializer=serialize),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.watch, request_deserializer=HealthCheckRequest.FromString, response_serializer=serialize),
        })
