"""normdyn.core: contracts and storage (store, schedule, plugin host, CLI group).

core imports nothing else of normdyn; built-in plugins are known to it only as
module-name strings in :data:`normdyn.core.plugins.DEFAULT_PLUGINS`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("normdyn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
