"""The bundle's JSON configs as package data: the library builds its preprocessing chains from them.

``xray2mri_bundle/data/configs`` is a symbolic link to the bundle's ``configs/`` folder (``../../configs``), so a
checkout and an editable install read the bundle's own files, and a wheel carries a copy of them
(``[tool.setuptools.package-data]`` in pyproject.toml). The files are read through ``importlib.resources``, never
by looking for the repository. :func:`parse_config` builds one item of one file with MONAI's ``ConfigParser``,
the caller's settings given as overrides of the file's top-level keys: the order and the settings of a chain
are written once, in the JSON (``configs/common.json``, ``configs/inference.json``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["chain_configs", "config_file", "given", "parse_config"]

#: the folder (a link in a checkout, a copy in a wheel) of the bundle configs inside this package
CONFIG_FOLDER = "configs"


def config_file(name: str) -> Traversable:
    """The packaged bundle config ``name`` (e.g. ``"common.json"``, ``"profiles/tiny.json"``)."""
    return resources.files(__package__).joinpath(CONFIG_FOLDER, *name.split("/"))


def chain_configs(pose_template: object = None) -> list[str]:
    """The packaged configs a preprocessing chain is built from: ``common.json``, plus the ``pose_frame.json``
    overlay when a pose template is given (the order ``monai.bundle run --config_file`` merges them in)."""
    return ["common.json"] if pose_template is None else ["common.json", "pose_frame.json"]


def given(**settings: Any) -> dict[str, Any]:
    """The settings that are not None: the overrides of a library call whose None arguments mean "as configured"."""
    return {key: value for key, value in settings.items() if value is not None}


@functools.lru_cache(maxsize=8)
def _load(name: str) -> dict[str, Any]:
    from monai.bundle import ConfigParser  # MONAI's reader (duplicate keys are an error)

    with resources.as_file(config_file(name)) as path:
        return ConfigParser.load_config_file(path)


def parse_config(name: str | Sequence[str], id: str, overrides: dict[str, Any] | None = None) -> Any:
    """Item ``id`` of the packaged config ``name`` (several names: merged in order, as ``monai.bundle run
    --config_file "[...]"`` merges them, e.g. ``["common.json", "pose_frame.json"]``), built by MONAI's
    ``ConfigParser`` after setting ``overrides``
    (config id -> value; a value may be an object, e.g. a localiser). Only the item and what it refers to are
    built. The file's ``imports`` (the workflow's modules: engines, networks, ...) are left out; the chains'
    expressions need only ``xray2mri_bundle``."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    import xray2mri_bundle.constants  # noqa: F401  (the expressions read ``xray2mri_bundle.constants``)

    names = [name] if isinstance(name, str) else list(name)
    parser = ConfigParser({}, globals={"xray2mri_bundle": "xray2mri_bundle"})
    for each in names:
        for key, value in copy.deepcopy(_load(each)).items():
            if key != "imports":
                merge_kv(parser, key, value)
    for key, value in (overrides or {}).items():
        if key not in parser:
            raise KeyError(f"{' + '.join(names)} has no setting {key!r}")
        parser[key] = value
    return parser.get_parsed_content(id)
