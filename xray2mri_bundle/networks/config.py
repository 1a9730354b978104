"""Constructor arguments recorded on the network when it is built (like diffusers' ``register_to_config``).

A class decorated with :func:`register_to_config` keeps, after ``__init__``, a JSON-able ``network.config``::

    {"_target_": "xray2mri_bundle.networks.conditional_unet.XrayConditionedUNet", "channels": [32, 64, 128], ...}

holding every constructor argument (defaults filled in, tuples as lists). The checkpoint writer stores it and the
reader rebuilds the network from it (``xray2mri_bundle.checkpoint``), so no config has to retype the sizes.
``_target_`` is the same key a MONAI bundle config uses, so a stored config is also a valid ``network_def``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

from torch import nn

from xray2mri_bundle.data.plain import to_plain

__all__ = ["CONFIG_ATTR", "register_to_config", "jsonable_arguments"]

CONFIG_ATTR = "config"
T = TypeVar("T", bound=type)


def jsonable_arguments(value: Any) -> Any:
    """``value`` as JSON data (tuples -> lists); raises ``TypeError`` for anything else (a module, a tensor)."""
    try:
        return to_plain(value, finite=False, strict=True)
    except TypeError as exc:
        raise TypeError(f"a constructor argument cannot be stored in a checkpoint: {exc}") from None


def register_to_config(cls: T) -> T:
    """Class decorator: after ``cls.__init__`` the instance has ``config`` (``_target_`` + all arguments).

    Works on the project's own networks and on subclasses of MONAI networks that inherit MONAI's ``__init__``.
    Arguments must be JSON data; ``*args`` / ``**kwargs`` constructors are refused at decoration time.
    """
    init = cls.__init__
    signature = inspect.signature(init)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        raise TypeError(f"{cls.__name__}.__init__ takes *args/**kwargs: its arguments cannot be recorded")
    target = f"{cls.__module__}.{cls.__qualname__}"

    @functools.wraps(init)
    def recording_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {name: value for name, value in bound.arguments.items() if name != "self"}
        # a plain dict attribute: nn.Module keeps it (deepcopy for EMA copies it), state_dict ignores it
        object.__setattr__(self, CONFIG_ATTR, {"_target_": target, **jsonable_arguments(arguments)})

    cls.__init__ = recording_init  # type: ignore[method-assign]
    return cls
