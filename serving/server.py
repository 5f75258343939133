r"""A drop-in `tensorflow_model_server`: gRPC and REST over SavedModels, in Python.

    python -m serving.server --port=8500 --rest_api_port=8501 \
        --model_name=half_plus_two --model_base_path=/models/half_plus_two

Flags keep `tensorflow_model_server`'s names and defaults. Flags of the real server that this
one does not implement are accepted and logged as ignored; arguments no version of it knows are
reported as "unknown argument" and skipped, as the real server does. This server's own limits
(`--max_num_samples`, `--max_batch_rows`, `--max_sample_rows`, `--max_tensor_bytes`,
`--grpc_max_message_bytes`, `--max_concurrent_requests`, `--num_initial_load_threads`) are documented in `--help` and docs/model-server.md.

`main` only parses flags into `ServerOptions`; `Server` is the library (tests and benchmarks
start it in-process or as `python -m serving.server`).
"""

import dataclasses
import faulthandler
import os
import signal
import sys
import threading
import time
from concurrent import futures
from typing import List

from absl import app
from absl import flags
from absl import logging

import serving
from serving import batching as batching_lib
from serving import errors

VERSION = "vizoo-model-server 0.1.0 (TensorFlow Serving 2.21 API)"
# TF Serving's thread-count defaults multiply the CPUs this process may run on (`batching.SCHEDULABLE_CPUS`).
SCHEDULABLE_CPUS = batching_lib.SCHEDULABLE_CPUS

# --------------------------------------------------------------------------------------------
# Flags: tensorflow_model_server's names and defaults.
# --------------------------------------------------------------------------------------------

flags.DEFINE_integer("port", 8500, "TCP port to listen on for gRPC API. 0 disables it: gRPC is then served on "
                     "--grpc_socket_path alone (0 without a socket path fails start-up).")
flags.DEFINE_integer("rest_api_port", 0,
                     "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not "
                     "be exported. This port must be different than the one specified in --port.")
flags.DEFINE_integer("rest_api_num_threads", 4 * SCHEDULABLE_CPUS,
                     "Number of threads for HTTP/REST API processing: requests parsed and run "
                     "at once (more wait their turn). Default: four per CPU this process may run "
                     "on, as TF Serving.",
                     lower_bound=1)
flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Timeout for HTTP/REST API calls.")
flags.DEFINE_bool("rest_api_enable_cors_support", False, "Enable CORS headers in response")
flags.DEFINE_string("model_name", "default",
                    "name of model (ignored if --model_config_file flag is set)")
flags.DEFINE_string("model_base_path", "",
                    "path to export (ignored if --model_config_file flag is set, otherwise "
                    "required)")
flags.DEFINE_string("model_config_file", "",
                    "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file "
                    "name, and serve the models in that file. (If used, --model_name, "
                    "--model_base_path are ignored.)")
flags.DEFINE_integer("model_config_file_poll_wait_seconds", 0,
                     "Interval in seconds between each poll of the filesystem for "
                     "model_config_file. If unset or set to zero, poll will be done exactly once "
                     "and not periodically.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1,
                     "Interval in seconds between each poll of the filesystem for new model "
                     "version. If set to zero poll will be exactly done once and not "
                     "periodically.")
flags.DEFINE_bool("enable_batching", False, "enable batching")
flags.DEFINE_string("batching_parameters_file", "",
                    "If non-empty, read an ascii BatchingParameters protobuf from the supplied "
                    "file name and use the contained values instead of the defaults.")
flags.DEFINE_string("grpc_channel_arguments", "",
                    "A comma separated list of arguments to be passed to the grpc server. (e.g. "
                    "grpc.max_connection_age_ms=2000)")
flags.DEFINE_string("grpc_socket_path", "",
                    "If non-empty, the gRPC API is also served on a UNIX domain socket at this path "
                    "(relative or absolute), with the same credentials as the port.")
flags.DEFINE_bool("enable_serialization_as_tensor_content", False,
                  "Predict answers carry each output as tensor_content (the packed bytes) instead of its "
                  "typed value field.")
flags.DEFINE_bool("enable_grpc_healthcheck_service", False,
                  "Enable the standard gRPC healthcheck service (grpc.health.v1.Health: the server as a whole, "
                  "service \"\", is SERVING until shutdown begins).")
flags.DEFINE_integer("grpc_max_threads", 4 * SCHEDULABLE_CPUS,
                     "Max grpc server threads to handle grpc messages.")
flags.DEFINE_string("monitoring_config_file", "",
                    "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file "
                    "name")
flags.DEFINE_string("ssl_config_file", "",
                    "If non-empty, read an ascii SSLConfig protobuf from the supplied file name "
                    "and set up a secure gRPC channel")
flags.DEFINE_bool("enforce_session_run_timeout", True,
                  "Enforce a gRPC call's deadline as the timeout of its session run (a run past it is "
                  "cancelled: DEADLINE_EXCEEDED).")
flags.DEFINE_bool("enable_model_warmup", True,
                  "Enables model warmup, which triggers lazy initializations (such as TF "
                  "optimizations) at load time, to reduce first request latency.")
flags.DEFINE_integer("num_request_iterations_for_warmup", 0,
                     "Number of times a request is iterated during warmup replay. This value is "
                     "used only if > 0.")
flags.DEFINE_integer("num_load_threads", 0,
                     "The number of threads in the thread-pool used to load servables after start-up (new "
                     "versions, reloaded configs). If set as 0, we don't use a thread-pool, and servable loads "
                     "are performed serially. The models of the first config load on four threads per CPU this "
                     "process may run on, as TF Serving's initial load.",
                     lower_bound=0)
flags.DEFINE_integer("max_num_load_retries", 5,
                     "maximum number of times it retries loading a model after the first failure, "
                     "before giving up. If set to 0, a load is attempted only once.")
flags.DEFINE_integer("load_retry_interval_micros", 60 * 1000 * 1000,
                     "The interval, in microseconds, between each servable load retry.")
flags.DEFINE_string("saved_model_tags", "serve",
                    "Comma-separated set of tags corresponding to the meta graph def to load from "
                    "SavedModel.")
flags.DEFINE_integer("tensorflow_session_parallelism", 0,
                     "Number of threads to use for running a Tensorflow session. Auto-configured "
                     "by default.")
flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0,
                     "Number of threads to use to parallelize the execution of an individual op. "
                     "Auto-configured by default.")
flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0,
                     "Controls the number of operators that can be executed simultaneously. "
                     "Auto-configured by default.")
flags.DEFINE_bool("allow_version_labels_for_unavailable_models", False,
                  "If true, allows assigning unused version labels to models that are not "
                  "available yet.")
flags.DEFINE_bool("enable_signature_method_name_check", False,
                  "Enable method_name check for SignatureDef. Disable this if serving native TF2 "
                  "regression/classification models.")
flags.DEFINE_bool("version", False, "Display version")

# This server's own limits (not flags of tensorflow_model_server).
flags.DEFINE_integer("max_num_samples", 10000,
                     "[vizoo] Largest value accepted for a scalar integer input named "
                     "`num_samples` (Monte Carlo signatures such as predict_mc); larger values "
                     "answer INVALID_ARGUMENT.")
flags.DEFINE_integer("max_batch_rows", 10000,
                     "[vizoo] Largest 0th dimension of any input tensor (rows, or tf.Examples for "
                     "Classify/Regress) in one request; larger requests answer INVALID_ARGUMENT.")
flags.DEFINE_integer("max_sample_rows", 1_000_000,
                     "[vizoo] Largest num_samples times rows in one request: a Monte Carlo "
                     "signature holds [num_samples, rows, units] activations, so this bounds its "
                     "memory; larger requests answer INVALID_ARGUMENT.")
flags.DEFINE_integer("max_tensor_bytes", 64 * 1024 * 1024,
                     "[vizoo] Largest decoded size of one input tensor; larger answers "
                     "RESOURCE_EXHAUSTED (a TensorProto can declare a huge shape in a few bytes).")
flags.DEFINE_integer("grpc_max_message_bytes", 64 * 1024 * 1024,
                     "[vizoo] Largest gRPC message (either way) and REST body; gRPC answers larger "
                     "ones RESOURCE_EXHAUSTED. tensorflow_model_server allows 2 GiB.")
flags.DEFINE_integer("max_concurrent_requests", 64,
                     "[vizoo] Requests processed at once (gRPC and REST together); more answer "
                     "RESOURCE_EXHAUSTED instead of queueing without bound.")

flags.DEFINE_integer("num_initial_load_threads", 4 * SCHEDULABLE_CPUS,
                     "[vizoo] Models of the first config loaded at once, before the ports open. Default: four per "
                     "CPU this process may run on, TF Serving's `ServerCore` value (a constant there, not a flag).",
                     lower_bound=1)
flags.DEFINE_string("bind_host", "0.0.0.0",
                    "[vizoo] Address the gRPC and REST ports listen on (tensorflow_model_server "
                    "always uses 0.0.0.0); 127.0.0.1 keeps a test or benchmark server private.")

# Flags of tensorflow_model_server that this server accepts but does not implement. Its boolean
# flags are booleans here too, so that `--enable_profiler` alone neither takes the next argument
# as its value nor fails for want of one.
_IGNORED_BOOL_FLAGS = (
    "enable_per_model_batching_parameters", "flush_filesystem_caches", "use_alts_credentials",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled", "enable_profiler",
    "force_allow_any_version_labels_for_unavailable_models", "skip_initialize_tpu",
    "use_tflite_model", "tfrt_enable",
)
_IGNORED_VALUE_FLAGS = (
    "num_unload_threads",
    "tensorflow_session_config_file", "platform_config_file", "per_process_gpu_memory_fraction",
    "num_tflite_pools", "num_tflite_interpreters_per_pool", "thread_pool_factory_config_file",
    "mixed_precision", "model_warmup_num_threads",
)
_IGNORED_FLAGS = _IGNORED_BOOL_FLAGS + _IGNORED_VALUE_FLAGS
_NOT_IMPLEMENTED = "[not implemented by this server: accepted and ignored]"
for _name in _IGNORED_BOOL_FLAGS:
    flags.DEFINE_bool(_name, None, _NOT_IMPLEMENTED)
for _name in _IGNORED_VALUE_FLAGS:
    flags.DEFINE_string(_name, None, _NOT_IMPLEMENTED)

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------------------------
# Config protos the tensorflow-serving-api wheel does not ship.
# --------------------------------------------------------------------------------------------

def _config_message_classes():
    """Message classes for BatchingParameters, MonitoringConfig and SSLConfig.

    The pip package `tensorflow-serving-api` ships `model_server_config_pb2` but not these three
    (they live in `session_bundle_config.proto`, `monitoring_config.proto`, `ssl_config.proto`).
    Rather than hand-parse text protos, we declare the same messages (names, field names, types;
    field numbers as in TF Serving's files, which text format does not use anyway) in a private
    descriptor pool and let protobuf's own text-format parser read the files, so they are read
    exactly as TF Serving reads them.
    """
    from google.protobuf import descriptor_pb2  # pylint: disable=import-outside-toplevel
    from google.protobuf import descriptor_pool  # pylint: disable=import-outside-toplevel
    from google.protobuf import message_factory  # pylint: disable=import-outside-toplevel
    from google.protobuf import wrappers_pb2  # pylint: disable=import-outside-toplevel

    fdp = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="vizoo/tf_serving_config_subset.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def message(name, fields):
        msg = file_proto.message_type.add(name=name)
        for number, (field_name, kind, type_name, repeated) in enumerate(fields, start=1):
            field = msg.field.add(name=field_name, number=number, type=kind,
                                  label=fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name

    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    bool_value = ".google.protobuf.BoolValue"
    message("BatchingParameters", [
        ("max_batch_size", fdp.TYPE_MESSAGE, int64_value, False),
        ("batch_timeout_micros", fdp.TYPE_MESSAGE, int64_value, False),
        ("max_enqueued_batches", fdp.TYPE_MESSAGE, int64_value, False),
        ("num_batch_threads", fdp.TYPE_MESSAGE, int64_value, False),
        ("thread_pool_name", fdp.TYPE_MESSAGE, string_value, False),
        ("allowed_batch_sizes", fdp.TYPE_INT64, None, True),
        ("pad_variable_length_inputs", fdp.TYPE_BOOL, None, False),
        ("enable_large_batch_splitting", fdp.TYPE_MESSAGE, bool_value, False),
        ("max_execution_batch_size", fdp.TYPE_MESSAGE, int64_value, False),
    ])
    message("PrometheusConfig", [
        ("enable", fdp.TYPE_BOOL, None, False),
        ("path", fdp.TYPE_STRING, None, False),
    ])
    message("MonitoringConfig", [
        ("prometheus_config", fdp.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", False),
    ])
    message("SSLConfig", [
        ("server_key", fdp.TYPE_STRING, None, False),
        ("server_cert", fdp.TYPE_STRING, None, False),
        ("custom_ca", fdp.TYPE_STRING, None, False),
        ("client_verify", fdp.TYPE_BOOL, None, False),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file_proto.SerializeToString())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"tensorflow.serving.{name}")) for name in ("BatchingParameters", "MonitoringConfig",
                                                   "SSLConfig")}


# --------------------------------------------------------------------------------------------
# The library: options -> a running server.
# --------------------------------------------------------------------------------------------

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _session_threads(opts) -> tuple:
    """(intra-op, inter-op) threads of every session, as TF Serving combines its three flags: the two specific
    ones if either is set (the other left to TensorFlow, 0), else `--tensorflow_session_parallelism` for both;
    all three set is refused."""
    session, intra, inter = (opts.tensorflow_session_parallelism, opts.tensorflow_intra_op_parallelism,
                             opts.tensorflow_inter_op_parallelism)
    if session > 0 and intra > 0 and inter > 0:
        raise errors.InvalidArgument(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
            "separately. You cannot configure all.")
    if intra > 0 or inter > 0:
        return max(intra, 0), max(inter, 0)
    return max(session, 0), max(session, 0)


@dataclasses.dataclass
class ServerOptions:
    """Everything the server needs, resolved from flags (or built by a test)."""

    port: int = 8500
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * SCHEDULABLE_CPUS
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 4 * SCHEDULABLE_CPUS
    grpc_socket_path: str = ""
    enable_serialization_as_tensor_content: bool = False
    enable_grpc_healthcheck_service: bool = False
    monitoring_config_file: str = ""
    ssl_config_file: str = ""
    enable_model_warmup: bool = True
    enforce_session_run_timeout: bool = True
    num_request_iterations_for_warmup: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    num_load_threads: int = 0
    num_initial_load_threads: int = 4 * SCHEDULABLE_CPUS
    saved_model_tags: str = "serve"
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    max_num_samples: int = 10000
    max_batch_rows: int = 10000
    max_sample_rows: int = 1_000_000
    max_tensor_bytes: int = 64 * 1024 * 1024
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_requests: int = 64
    bind_host: str = "0.0.0.0"

    @classmethod
    def from_flags(cls, flag_values) -> "ServerOptions":
        return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)
                      if f.name in flag_values})


def parse_channel_arguments(text: str) -> List[tuple]:
    """`--grpc_channel_arguments`: "k=v,k2=v2"; values that parse as int are passed as int."""
    arguments = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.InvalidArgument(f"Malformed gRPC channel argument: {item}")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


class Server:
    """Builds the model manager, the data plane, and the gRPC and REST front ends.

    `start()` loads every configured model first -- side by side, on up to `num_initial_load_threads` threads,
    each version's warmup replayed before it is AVAILABLE -- and opens the ports only afterwards, as TF Serving's
    `Server::BuildAndStart` opens them once `ServerCore::Create` has waited for the first config's models. It
    logs where start-up time went; it raises a `ServingError` when the server cannot start.
    """

    def __init__(self, options: ServerOptions):
        self.options = options
        self.manager = None
        self.plane = None
        self.metrics = None
        self._grpc = None
        self._health = None
        self._rest = None
        self._batcher = None
        self._config_poller = None
        self._stopped = threading.Event()

    def _read_configs(self):
        from serving import model_config  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

        opts = self.options
        if opts.port == 0 and not opts.grpc_socket_path:  # --port=0 disables the port; the socket may serve alone
            # The words of tensorflow_model_server since it took --port=0 (tensorflow/serving#1790).
            raise errors.InvalidArgument(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.")
        if not opts.model_base_path and not opts.model_config_file:
            raise errors.InvalidArgument(
                "Both server_options.model_base_path and server_options.model_config_file are "
                "empty!")
        if opts.model_config_file:
            config = model_config.parse_text_proto_file(
                opts.model_config_file, model_server_config_pb2.ModelServerConfig())
        else:
            logging.info("Building single TensorFlow model file config:  model_name: %s "
                         "model_base_path: %s", opts.model_name, opts.model_base_path)
            config = model_config.single_model_config(opts.model_name, opts.model_base_path)
        classes = _config_message_classes()
        batching = None
        if opts.enable_batching:
            batching = batching_lib.BatchingOptions()
            if opts.batching_parameters_file:
                params = model_config.parse_text_proto_file(
                    opts.batching_parameters_file, classes["BatchingParameters"]())
                for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                             "num_batch_threads"):
                    if params.HasField(name):
                        setattr(batching, name, getattr(params, name).value)
                batching.allowed_batch_sizes = tuple(params.allowed_batch_sizes)
                for name in ("pad_variable_length_inputs", "enable_large_batch_splitting",
                             "max_execution_batch_size"):
                    if params.HasField(name) if name != "pad_variable_length_inputs" else getattr(params, name):
                        logging.warning("BatchingParameters.%s is not implemented; ignored", name)
            batching.validate()
        elif opts.batching_parameters_file:
            raise errors.InvalidArgument(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true.")
        monitoring = classes["MonitoringConfig"]()
        if opts.monitoring_config_file:
            model_config.parse_text_proto_file(opts.monitoring_config_file, monitoring)
        ssl = None
        if opts.ssl_config_file:
            ssl = model_config.parse_text_proto_file(opts.ssl_config_file, classes["SSLConfig"]())
        return config, batching, monitoring, ssl

    def start(self):
        """Loads the models, then serves. Raises `ServingError` if that fails."""
        started, before = time.monotonic(), _process_seconds()
        from serving import config_poller  # pylint: disable=import-outside-toplevel
        from serving import data_plane  # pylint: disable=import-outside-toplevel
        from serving import model_manager  # pylint: disable=import-outside-toplevel
        from serving import monitoring as monitoring_lib  # pylint: disable=import-outside-toplevel
        from serving import servicer  # pylint: disable=import-outside-toplevel
        from serving import warmup  # pylint: disable=import-outside-toplevel

        imported = time.monotonic()  # TensorFlow comes with tensorflow_serving.apis
        opts = self.options
        intra, inter = _session_threads(opts)  # checked with the other options, before any model loads
        config, batching, monitoring, ssl = self._read_configs()
        self.metrics = monitoring_lib.Metrics()
        manager_options = model_manager.ManagerOptions(
            file_system_poll_wait_seconds=opts.file_system_poll_wait_seconds,
            saved_model_tags=tuple(t for t in opts.saved_model_tags.split(",") if t),
            max_num_load_retries=opts.max_num_load_retries,
            load_retry_interval_seconds=max(opts.load_retry_interval_micros, 0) / 1e6,
            enable_model_warmup=opts.enable_model_warmup,
            num_request_iterations_for_warmup=max(opts.num_request_iterations_for_warmup, 1),
            allow_version_labels_for_unavailable_models=(
                opts.allow_version_labels_for_unavailable_models),
            intra_op_parallelism=intra, inter_op_parallelism=inter,
            num_initial_load_threads=opts.num_initial_load_threads, num_load_threads=opts.num_load_threads)
        limits = data_plane.Limits(
            max_num_samples=opts.max_num_samples, max_batch_rows=opts.max_batch_rows,
            max_sample_rows=opts.max_sample_rows, max_tensor_bytes=opts.max_tensor_bytes,
            max_concurrent_requests=opts.max_concurrent_requests)
        if batching is not None:
            self._batcher = batching_lib.BatchScheduler(batching,
                                                        self.metrics.set_batch_queue_rows)

        plane_box = {}

        def warm_up(loaded):
            warmup.warm_up(plane_box["plane"], loaded, manager_options.num_request_iterations_for_warmup)

        self.manager = model_manager.ModelManager(manager_options, warmup=warm_up,
                                                  on_run=self.metrics.on_run)
        self.plane = data_plane.DataPlane(self.manager, limits, self._batcher,
                                        opts.enable_signature_method_name_check, self.metrics,
                                        opts.enable_serialization_as_tensor_content)
        plane_box["plane"] = self.plane
        loading = time.monotonic()
        self.manager.reload_config(config)
        loaded = time.monotonic()
        self.manager.start_polling()
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._config_poller = config_poller.ConfigFilePoller(
                self.manager, opts.model_config_file, opts.model_config_file_poll_wait_seconds)
            self._config_poller.start()
        self._start_grpc(servicer, ssl)
        self._start_rest(monitoring)
        self._log_startup(before, started, imported, loading, loaded, time.monotonic())

    def _log_startup(self, before, started, imported, loading, loaded, serving_at):
        """One line of where start-up time went (seconds): the interpreter and flags before `start`, the imports
        (TensorFlow's among them), the models (wall time, and each version's session load and warmup summed
        over the threads that ran them side by side), the ports."""
        times = self.manager.load_times()
        threads = min(max(self.options.num_initial_load_threads, 1), max(len({t[0] for t in times}), 1))
        logging.info("Start-up: interpreter and flags %s s, imports %.2f s, options %.2f s, models %.2f s "
                     "(%d version(s) on up to %d thread(s); sessions %.2f s, warmup %.2f s, summed), ports %.2f s",
                     "?" if before is None else f"{before:.2f}", imported - started, loading - imported,
                     loaded - loading, len(times), threads, sum(t[2] for t in times), sum(t[3] for t in times),
                     serving_at - loaded)

    def _start_grpc(self, servicer, ssl):
        import grpc  # pylint: disable=import-outside-toplevel

        opts = self.options
        grpc_options = [("grpc.max_receive_message_length", opts.grpc_max_message_bytes),
                        ("grpc.max_send_message_length", opts.grpc_max_message_bytes),
                        ("grpc.so_reuseport", 0)]
        grpc_options += parse_channel_arguments(opts.grpc_channel_arguments)
        # More worker threads than admitted requests, so that an overloaded server answers
        # RESOURCE_EXHAUSTED quickly instead of leaving calls queued in gRPC.
        workers = max(opts.grpc_max_threads, opts.max_concurrent_requests + 4)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                            thread_name_prefix="grpc"),
                                 options=grpc_options)
        servicer.add_servicers(self._grpc, self.plane, opts.enforce_session_run_timeout)
        if opts.enable_grpc_healthcheck_service:
            from serving import health  # pylint: disable=import-outside-toplevel
            # A quarter of the worker threads at most may sit in health watches.
            self._health = health.HealthService(max_watchers=workers // 4)
            self._grpc.add_generic_rpc_handlers((self._health.handler(),))
        credentials = None if ssl is None else grpc.ssl_server_credentials(
            [(ssl.server_key.encode(), ssl.server_cert.encode())],
            root_certificates=ssl.custom_ca.encode() or None, require_client_auth=ssl.client_verify)
        address = f"{opts.bind_host}:{opts.port}"
        # The port (none for --port=0) and, as TF Serving does, a UNIX socket with the same credentials when one is
        # asked for.
        listens = [address] if opts.port else []
        if opts.grpc_socket_path:
            listens.append(f"unix:{opts.grpc_socket_path}")
        for listen in listens:
            try:
                bound = (self._grpc.add_insecure_port(listen) if credentials is None
                         else self._grpc.add_secure_port(listen, credentials))
            except RuntimeError as exc:  # e.g. the port is taken
                logging.error("Cannot listen on %s: %s", listen, exc)
                bound = 0
            if not bound:
                raise errors.InvalidArgument("Failed to BuildAndStart gRPC server")
        self._grpc.start()
        if opts.port:
            logging.info("Running gRPC ModelServer at %s ...", address)
        if opts.grpc_socket_path:
            logging.info("Running gRPC ModelServer at UNIX socket %s ...", opts.grpc_socket_path)

    def _start_rest(self, monitoring):
        from serving import rest  # pylint: disable=import-outside-toplevel

        opts = self.options
        if not opts.rest_api_port:
            return
        if opts.rest_api_port == opts.port:
            logging.error("server_options.http_port cannot be same as grpc_port. Please use a "
                          "different port for HTTP/REST API. Skipped exporting HTTP/REST API.")
            return
        metrics, path = None, ""
        if monitoring.prometheus_config.enable:
            metrics = self.metrics
            path = monitoring.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
        timeout = opts.rest_api_timeout_in_ms / 1000 if opts.rest_api_timeout_in_ms > 0 else None
        api = rest.RestApi(self.plane, timeout, metrics, path)
        try:  # an invalid --rest_api_num_threads raises InvalidArgument before the port is bound
            self._rest = rest.RestServer(api, opts.rest_api_port, opts.grpc_max_message_bytes,
                                         opts.rest_api_enable_cors_support, opts.bind_host,
                                         idle_timeout=timeout,
                                         num_threads=opts.rest_api_num_threads)
        except OSError as exc:
            # As TF Serving: the gRPC API keeps serving without REST.
            logging.error("Failed to start HTTP Server at localhost:%d: %s", opts.rest_api_port,
                          exc)
            return
        self._rest.start()
        logging.info("Exporting HTTP/REST API at:localhost:%d ...", opts.rest_api_port)

    def wait(self):
        self._stopped.wait()

    def stop(self, grace_seconds: float = 5.0):
        """Stops accepting requests, lets in-flight ones finish, unloads the models (each step logged with its
        time, so a slow shutdown shows which waited)."""
        if self._stopped.is_set():
            return
        started = time.monotonic()

        def done(step):
            logging.info("Shutdown: %s stopped (%.2f s)", step, time.monotonic() - started)

        if self._health is not None:  # NOT_SERVING from the start of shutdown, as gRPC's default service says
            self._health.shutdown()
        if self._rest is not None:
            self._rest.stop()
            done("REST server")
        if self._grpc is not None:
            self._grpc.stop(grace_seconds).wait()
            done("gRPC server")
        if self._batcher is not None:
            self._batcher.stop()
            done("batch scheduler")
        if self.manager is not None:
            # Before the config poller: its thread may be inside a reload that only the
            # manager's stop ends.
            self.manager.stop()
            done("models")
        if self._config_poller is not None:
            self._config_poller.stop()
            done("config file poller")
        self._stopped.set()


def _process_seconds():
    """Seconds since this process started (Linux's /proc, to the clock tick), or None where there is no /proc."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------------
# The binary.
# --------------------------------------------------------------------------------------------

def _parse_flags(argv: List[str]) -> List[str]:
    """absl parsing that tolerates what `tensorflow_model_server` tolerates.

    Arguments no flag matches are reported ("unknown argument: ...") and dropped, and flags of
    the real server that this one does not implement are accepted with a warning.
    """
    try:
        remaining = FLAGS(argv, known_only=True)
    except flags.Error as error:  # a bad value: one line naming the flag, as absl's own parser says it
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n"
                         "Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    for arg in remaining[1:]:
        logging.warning("unknown argument: %s (ignored)", arg)
    for name in _IGNORED_FLAGS:
        if FLAGS[name].present:
            logging.warning("--%s is a tensorflow_model_server flag this server does not "
                            "implement; ignored", name)
    return remaining[:1]


def main(argv):
    del argv  # Everything comes from flags.
    if FLAGS.version:
        sys.stdout.write(VERSION + "\n")
        return 0
    server = Server(ServerOptions.from_flags(FLAGS))
    try:
        server.start()
    except errors.ServingError as exc:
        logging.error("Failed to start server. Error: %s: %s", errors.code_name(exc.code),
                      exc.message)
        server.stop(grace_seconds=0)
        return 255
    # SIGUSR1 writes every thread's stack to stderr: where a hung shutdown or request waits (the test harness
    # sends it before it SIGKILLs a server that did not stop).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=server.stop).start())
    server.wait()
    return 0


def run():
    """Console script `vizoo-model-server`."""
    serving.apply_runtime_defaults()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
