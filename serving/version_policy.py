"""Which versions of a model there are (the numbered children of its base path) and which its policy asks for."""

import os
from typing import Dict, Optional

from absl import logging

_INT64_MAX = 2 ** 63 - 1


def _policy_choice(config):
    return config.model_version_policy.WhichOneof("policy_choice")


def aspired_versions(config, children: Dict[int, str]) -> Dict[int, str]:
    """The versions a model's version policy asks for, among the numbered sub-directories."""
    choice = _policy_choice(config)
    if choice == "all":
        return dict(children)
    if choice == "specific":
        wanted = set(config.model_version_policy.specific.versions)
        return {v: p for v, p in children.items() if v in wanted}
    num = max(config.model_version_policy.latest.num_versions, 1) if choice == "latest" else 1
    return {v: children[v] for v in sorted(children, reverse=True)[:num]}


_C_SPACES = " \t\n\v\f\r"  # C's isspace in the "C" locale


def parse_version(name: str) -> Optional[int]:
    """A base path child's version number, or None: TF Serving's `ParseVersionNumber`, i.e. tsl's
    `safe_strto64`: optional leading and trailing whitespace around an optional "-" and ASCII digits, within
    int64. So "-4" is version -4 and " 7" version 7, while "+7", "tmp-3", Arabic-Indic digits and 2^63 are not
    versions (a version past int64 could be neither reported nor asked for)."""
    text = name.strip(_C_SPACES)
    digits = text[1:] if text.startswith("-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def list_versions(base_path: str) -> Dict[int, str]:
    """The base path's children that name versions: version -> path.

    As TF Serving's file system source: every child whose name parses (`parse_version`) counts, files too (a
    file then fails to load like a version directory without a SavedModel), and names that do not parse (an
    exporter's temporary directories, for instance) are ignored; `00000123` is version 123. Where two names
    give one version, the later in byte order wins, with TF Serving's warning.
    """
    children = {}
    for entry in sorted(os.listdir(base_path)):
        version = parse_version(entry)
        if version is None:
            continue
        if version in children:
            logging.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s "
                            "will be ignored.", version, entry, os.path.basename(children[version]))
        children[version] = os.path.join(base_path, entry)
    return children
