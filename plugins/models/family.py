"""What every built-in model family shares: parameters with presets, the
model_spec, and rebuilding a module from a spec alone.

A family subclass says which parameters it takes (``params``: name ->
default), how presets fill them from the data shape (``defaults``) and how to
``make`` the module. The spec is then ``{"name", ...params, "input_shape",
"num_classes", "layers"}`` and ``build(spec)`` calls ``make`` with exactly
the stored parameters, so a spec rebuilds the same architecture anywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.layer_trace import trace_layers

__all__ = ["ModelFamilyBase"]

_SPEC_KEYS = ("name", "input_shape", "num_classes", "layers")


class ModelFamilyBase(ABC):
    """Base of the built-in families (implements the ModelFamily protocol)."""

    name: ClassVar[str]
    params: ClassVar[dict[str, Any]]  # parameter -> default (None: filled by ``defaults``)

    def defaults(self, input_shape: tuple[int, ...], num_classes: int, preset: str | None) -> dict[str, Any]:
        """Preset values for the parameters left unset (override per family)."""
        if preset is not None:
            raise ConfigError(f"model {self.name!r} has no presets (got preset={preset!r})")
        return {}

    @abstractmethod
    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The freshly initialised module for resolved ``params``."""

    def resolve(self, input_shape: tuple[int, ...], num_classes: int, **given: Any) -> dict[str, Any]:
        """All parameters: ``given`` over the preset over the defaults; unknown names are an error."""
        preset = given.pop("preset", None)
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            allowed = ", ".join(["preset", *sorted(self.params)])
            raise ConfigError(f"model {self.name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
        resolved = dict(self.params)
        resolved.update(self.defaults(tuple(input_shape), int(num_classes), preset))
        resolved.update({k: v for k, v in given.items() if v is not None})
        missing = sorted(k for k, v in resolved.items() if v is None)
        if missing:
            raise ConfigError(f"model {self.name!r}: parameter(s) {', '.join(missing)} must be set")
        return resolved

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
        """The model_spec: name, resolved parameters, input shape, classes and traced layers."""
        input_shape = tuple(int(s) for s in input_shape)
        resolved = self.resolve(input_shape, num_classes, **params)
        module = self.make(resolved, input_shape, int(num_classes))
        return {
            "name": self.name,
            **resolved,
            "input_shape": list(input_shape),
            "num_classes": int(num_classes),
            "layers": trace_layers(module, input_shape),
        }

    def build(self, spec: Mapping[str, Any]) -> nn.Module:
        """Rebuild the module from a model_spec alone (weights freshly initialised)."""
        try:
            input_shape = tuple(int(s) for s in spec["input_shape"])
            num_classes = int(spec["num_classes"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"model spec for {self.name!r} lacks a valid input_shape/num_classes") from None
        params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        return self.make(self.resolve(input_shape, num_classes, **params), input_shape, num_classes)
