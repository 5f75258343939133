"""Watching `--model_config_file`: the server applies the file again whenever it changes."""

import threading

from absl import logging

from serving import errors
from serving.model_config import parse_text_proto_file


class ConfigFilePoller:
    """Re-reads `--model_config_file` every few seconds and applies it when it parses.

    As TF Serving's `PollFilesystemAndReloadConfig`: an unreadable file or a refused config is
    logged and the current config keeps serving.
    """

    def __init__(self, manager, path: str, interval_seconds: float):
        self._manager = manager
        self._path = path
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model_config_poll", daemon=True)

    def start(self):
        self._thread.start()

    def _loop(self):
        from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

        while not self._stop.wait(self._interval):
            try:
                config = parse_text_proto_file(self._path,
                                               model_server_config_pb2.ModelServerConfig())
            except errors.ServingError as exc:
                logging.error("Failed to read ModelServerConfig file: %s", exc.message)
                continue
            if config == self._manager.config:
                continue
            try:
                self._manager.reload_config(config)
            except Exception as exc:  # pylint: disable=broad-except
                logging.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s",
                              errors.to_serving_error(exc).message)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
