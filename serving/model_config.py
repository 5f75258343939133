"""ModelServerConfig and the other text-proto config files, as TF Serving's `ServerCore` reads and checks them."""

import re

from absl import logging

from serving import errors


def parse_text_proto_file(path: str, message):
    """Reads a text-format proto file into `message`, as TF Serving's `ParseProtoTextFile`.

    Raises:
      InvalidArgument: "Invalid protobuf file: '<path>'" when the text does not parse (after
        logging protobuf's own "Error parsing text-format <type>: ..." line), NotFound when the
        file cannot be read.
    """
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise errors.NotFound(f"{path}; {exc.strerror or exc}") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        logging.error("Error parsing text-format %s: %s", message.DESCRIPTOR.full_name, exc)
        raise errors.InvalidArgument(f"Invalid protobuf file: '{path}'") from None
    return message


def is_relative_path(base_path: str) -> bool:
    """TF Serving's `UriIsRelativePath`: neither a URI with a scheme (`gs://...`, `file:///...`) nor an absolute
    path. The empty path is relative."""
    return re.match(r"^[A-Za-z][0-9A-Za-z.]*://", base_path) is None and not base_path.startswith("/")


def single_model_config(model_name: str, base_path: str):
    """The config `--model_name`/`--model_base_path` stand for (`BuildSingleModelConfig`)."""
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def platform_of(model_config) -> str:
    """`GetPlatform` (server_core.cc): the deprecated `model_type` or `model_platform`, exactly one of them."""
    if model_config.model_type:  # not MODEL_TYPE_UNSPECIFIED
        if model_config.model_platform:
            raise errors.InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform.")
        if model_config.model_type != 1:  # TENSORFLOW
            raise errors.InvalidArgument(
                f"ModelServerConfig::model_type choice {model_config.model_type} not supported.")
        return "tensorflow"
    if not model_config.model_platform:
        raise errors.InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.")
    return model_config.model_platform


def check_config(new_config, current_config=None):
    """`ServerCore::ReloadConfig`'s checks, in its order: names unique, base paths absolute, no model changing
    platform, then every platform known (`CreateStoragePathRoutes`; TF Serving checks that after the labels,
    here before them, so a refused config changes nothing).

    Args:
      new_config: the `ModelServerConfig` to apply.
      current_config: the one it replaces, None at start-up.

    Raises:
      InvalidArgument: the first check the new config fails.
    """
    names = set()
    for model_config in new_config.model_config_list.config:
        if model_config.name in names:
            raise errors.InvalidArgument(
                f"Illegal to list model {model_config.name} multiple times in config list")
        names.add(model_config.name)
    for model_config in new_config.model_config_list.config:
        if is_relative_path(model_config.base_path):
            # As ServerCore's check (without a model_config_list_root_dir, which no flag sets): a relative
            # path would depend on the directory the server happened to start in.
            raise errors.InvalidArgument(
                f"Expected model {model_config.name} to have an absolute path or URI; got "
                f"base_path()={model_config.base_path}")
    if current_config is not None:
        old = {c.name: platform_of(c) for c in current_config.model_config_list.config}
        for model_config in new_config.model_config_list.config:
            if model_config.name in old and platform_of(model_config) != old[model_config.name]:
                raise errors.InvalidArgument(
                    f"Illegal to change a model's platform. For model {model_config.name} platform was "
                    f"{old[model_config.name]} and new platform requested is {platform_of(model_config)}")
    for model_config in new_config.model_config_list.config:
        platform = platform_of(model_config)
        if platform != "tensorflow":
            raise errors.InvalidArgument(
                f"Model {model_config.name} requests unsupported platform {platform}")
        if not model_config.name:
            raise errors.InvalidArgument("Model config has an empty name")
