"""normdyn.core: contracts and storage (store, schedule, plugin host, CLI group).

core imports nothing else of normdyn and names none of it: the built-in plugins
are entry points of normdyn's own package metadata, found like third-party ones.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("normdyn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
