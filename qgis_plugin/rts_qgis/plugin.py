"""The plugin object QGIS creates: it registers the rts Processing provider (in the desktop, and headless in
``qgis_process``, which calls :meth:`RtsPlugin.initProcessing` of plugins with ``hasProcessingProvider=yes``)."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication

from .provider import RtsProvider


class RtsPlugin:
    """Adds the rts provider to Processing; nothing else in the interface (the algorithms are in the toolbox)."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: Optional[RtsProvider] = None

    def initProcessing(self) -> None:
        """Register the provider (once)."""
        if self.provider is None:
            self.provider = RtsProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
