"""Networks that remember how they were built, so that a trained model can describe itself.

:func:`record_arguments` makes a network class keep the arguments of its construction (``init_arguments``, defaults
filled in); :func:`network_definition` turns a network back into the MONAI config component that builds it again,
``{"_target_": "package.module.Class", **arguments}``. Training stores that definition with the weights
(:class:`monai_ext.bundle.ModelConfig`); evaluation, inference, export and MONAI Label rebuild the network from it.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["network_definition", "record_arguments"]

T = TypeVar("T", bound=type)


def record_arguments(cls: T) -> T:
    """Class decorator: instances of ``cls`` get ``init_arguments``, the arguments of their construction by name with
    the defaults filled in. A subclass records its own arguments only when it is decorated too; an undecorated
    subclass records nothing (its arguments may differ from its base's)."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        for name, param in signature.parameters.items():  # **kwargs of the signature stay flat
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL and arguments.get(name):
                raise TypeError(f"{cls.__name__}: positional *{name} cannot be recorded by name.")
        if type(self).__init__ is __init__:
            self.init_arguments = arguments

    cls.__init__ = __init__
    return cls


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON types (tuples become lists, enums their values); anything else is an error naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.numel() <= 64:
        return value.tolist()
    raise TypeError(f"{where}: {type(value).__name__} cannot be written into a model config (JSON types only).")


def network_definition(network: torch.nn.Module) -> dict[str, Any]:
    """The MONAI config component that builds ``network`` again: ``{"_target_": "module.Class", **init_arguments}``.

    ``DataParallel``/``DistributedDataParallel`` wrappers are looked through. A network class that does not record
    its arguments (decorate it with :func:`record_arguments`) is an error.
    """
    if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        network = network.module
    network = getattr(network, "_orig_mod", network)  # torch.compile
    cls = type(network)
    arguments = getattr(network, "init_arguments", None)
    if arguments is None:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} does not record its construction arguments, so a trained model "
            "cannot describe it: decorate the class with monai_ext.networks.record_arguments."
        )
    target = f"{cls.__module__}.{cls.__qualname__}"
    return {"_target_": target, **_plain(dict(arguments), target)}
