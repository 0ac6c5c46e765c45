"""The rts Processing provider: the algorithms in the toolbox, and the plugin's one setting (the rts executable,
under Settings > Options > Processing > Providers > rts)."""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS, HERE, SETTING_EXECUTABLE, plugin_version

PROVIDER_ID = "rts"


def _config() -> Any:
    """Processing's settings (None where the Processing plugin is not there, as in a bare script)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return None
    return ProcessingConfig, Setting


class RtsProvider(QgsProcessingProvider):
    """Provides the rts algorithms (``rts:predict``, ``rts:track``, ``rts:exportarts``, ``rts:prepare``)."""

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "rts"

    def longName(self) -> str:
        return f"rts {plugin_version()}: retrogressive thaw slumps".strip()

    def icon(self) -> QIcon:
        return QIcon(self.svgIconPath())

    def svgIconPath(self) -> str:
        return os.path.join(HERE, "icon.svg")

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        return "gpkg"

    def supportedOutputVectorLayerExtensions(self) -> list:
        return ["gpkg", "shp", "geojson", "parquet"]

    def supportedOutputRasterLayerExtensions(self) -> list:
        return ["tif"]

    def load(self) -> bool:
        """Register the setting (the rts executable; empty: rts is looked for on the PATH), then the algorithms."""
        config = _config()
        if config is not None:
            ProcessingConfig, Setting = config
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(Setting(
                self.name(), SETTING_EXECUTABLE,
                "rts executable (the `rts` of your Python environment; empty: rts on the PATH, or $RTS_EXECUTABLE)",
                "", valuetype=Setting.FILE))
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        config = _config()
        if config is not None:
            config[0].removeSetting(SETTING_EXECUTABLE)

    def loadAlgorithms(self) -> None:
        for alg in ALGORITHMS:
            self.addAlgorithm(alg())
