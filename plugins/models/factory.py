"""The ``factory`` model family: the user's own architecture, built by a callable the user names.

model_spec: ``{"name": "factory", "factory": "package.module:callable", "kwargs": {...},
"input_shape": [C, H, W], "num_classes": K, "layers": [...]}``. ``build`` imports
``package.module`` and calls ``callable(**kwargs)``: this runs the user's code,
so it happens only for a factory the user named (``normdyn import
--model-factory``, the Recorder, or a model spec they wrote), and never for a
standard-library module or a built-in function. The layers are traced from one
forward pass, exactly as for normdyn's own families, so every measure applies.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import Register, hookimpl
from normdyn.core.layer_trace import trace_layers

__all__ = ["FactoryFamily", "resolve_factory"]

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def resolve_factory(target: str) -> Any:
    """The callable named by ``target`` ("package.module:callable"); a clear ConfigError otherwise."""
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ConfigError(f"model factory {target!r}: use MODULE:CALLABLE, e.g. torchvision.models:resnet18")
    module_name, attr = target.split(":")
    if module_name.split(".")[0] in sys.stdlib_module_names or module_name == "builtins":
        raise ConfigError(f"model factory {target!r}: a standard-library callable does not build a model")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any failure to import is reported as theirs
        raise ConfigError(
            f"model factory {target!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model factory {target!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        raise ConfigError(f"model factory {target!r}: {type(obj).__name__} is not a class or a function")
    return obj


class FactoryFamily:
    """A model built by the user's callable (see the module docstring)."""

    name = "factory"

    def make(self, target: str, kwargs: Mapping[str, Any]) -> nn.Module:
        """``target(**kwargs)``, checked to be an ``nn.Module``."""
        factory = resolve_factory(target)
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"model factory {target!r}: kwargs must be a JSON object, not {type(kwargs).__name__}")
        try:
            module = factory(**kwargs)
        except Exception as exc:  # the user's code: report what it raised, with the call
            raise ConfigError(
                f"model factory {target!r} raised {type(exc).__name__}: {exc} (called with {dict(kwargs)})"
            ) from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model factory {target!r} returned a {type(module).__name__}, not a torch.nn.Module")
        return module

    def spec(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int | None = None,
        factory: str = "",
        kwargs: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """The model_spec of ``factory(**kwargs)`` on inputs of ``input_shape`` (layers traced)."""
        if params:
            raise ConfigError(f"model 'factory': unknown parameter(s) {', '.join(sorted(params))}; use kwargs")
        kwargs = dict(kwargs or {})
        module = self.make(factory, kwargs)
        return self.spec_of(module, input_shape=input_shape, num_classes=num_classes, factory=factory, kwargs=kwargs)

    def spec_of(
        self,
        module: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int | None = None,
        factory: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The model_spec of an existing ``module`` (``factory`` None: the module cannot be rebuilt later)."""
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ConfigError(f"input shape {input_shape!r}: give positive sizes, e.g. 3,32,32")
        try:
            layers = trace_layers(module, shape)
            was_training = module.training
            try:
                with torch.no_grad():
                    device = next(iter(module.parameters()), torch.empty(0)).device
                    out = module.eval()(torch.zeros((1, *shape), device=device))
            finally:
                module.train(was_training)  # the caller's module comes back in the mode it was in
        except ConfigError:
            raise
        except Exception as exc:  # the model's own forward refused the shape
            raise ConfigError(
                f"model {factory or type(module).__name__}: a forward pass on input shape "
                f"{','.join(map(str, shape))} failed ({type(exc).__name__}: {exc}); check --input-shape"
            ) from None
        classes = int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim >= 1 else None
        if num_classes is not None and classes is not None and int(num_classes) != classes:
            raise ConfigError(f"model {factory or type(module).__name__}: {classes} outputs, not {num_classes} classes")
        spec: dict[str, Any] = {
            "name": self.name,
            "factory": factory,
            "kwargs": dict(kwargs or {}),
            "input_shape": list(shape),
            "num_classes": classes if num_classes is None else int(num_classes),
            "layer_order": "forward",
            "layers": layers,
        }
        return spec

    def build(self, spec: Mapping[str, Any]) -> nn.Module:
        """Rebuild the module from its spec by calling the factory it names."""
        target = spec.get("factory")
        if not target:
            raise ConfigError(
                "this run's model was recorded from an object without a factory, so it cannot be rebuilt; "
                "pass model_factory= to the Recorder (or --model-factory to normdyn import)"
            )
        return self.make(str(target), spec.get("kwargs") or {})


@hookimpl
def register_models(register: Register) -> None:
    register(FactoryFamily())
