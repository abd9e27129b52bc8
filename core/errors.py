"""The exception hierarchy. Library code raises these; only CLI code turns
them into click errors (one line, no traceback, non-zero exit)."""

from __future__ import annotations


class NormdynError(Exception):
    """Base class of every error normdyn raises on purpose."""


class StoreError(NormdynError):
    """A store, run index or checkpoint file is missing, damaged or inconsistent."""


class ScheduleError(NormdynError):
    """A checkpoint schedule string cannot be parsed or realised."""


class PluginError(NormdynError):
    """A plugin is misbehaving: duplicate names, bad hook implementations."""


class UnknownNameError(NormdynError):
    """A model, dataset, measure or fitter name that no plugin registered."""


class ConfigError(NormdynError):
    """A training, analysis or fit configuration is invalid."""


class DataError(NormdynError):
    """A dataset is absent or malformed, or input data (e.g. a CSV) is unusable."""


class MeasureError(NormdynError):
    """A complexity measure could not be computed on one checkpoint."""


class FitError(NormdynError):
    """A scaling-law fit cannot be done on the given data."""
