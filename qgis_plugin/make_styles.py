"""Write the plugin's QML styles (``rts_qgis/styles/*.qml``) with PyQGIS.

The QML files are the product (shipped in the plugin and written by ``rts predict`` into its GeoPackages'
``layer_styles``); this script is how they were made, to change them by code rather than by hand. Run it with
QGIS's Python (Debian: ``QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_plugin/make_styles.py``). It writes with
the installed QGIS (the committed files come from QGIS 3.22, the oldest version the plugin supports, so that
every later 3.x reads them).
"""

from __future__ import annotations

import os
import sys

from qgis.core import (
    QgsApplication,
    QgsFillSymbol,
    QgsGraduatedSymbolRenderer,
    QgsMapLayer,
    QgsPalLayerSettings,
    QgsRendererRange,
    QgsRuleBasedRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

#: what the styles hold
CATEGORIES = QgsMapLayer.StyleCategories(QgsMapLayer.Symbology | QgsMapLayer.Labeling)

STYLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rts_qgis", "styles")

#: score classes of predicted slumps: (low, high, label, outline colour)
SCORES = ((0.0, 0.5, "score < 0.5", "#ffe066"), (0.5, 0.7, "0.5 - 0.7", "#ff9f1c"),
          (0.7, 0.85, "0.7 - 0.85", "#f0542a"), (0.85, 1.0, "0.85 - 1", "#c8007d"))

#: growth classes of tracks and observations, m²/year: (expression, label, colour)
GROWTH = (("{f} < 0", "shrinking", "#2c7bb6"),
          ("{f} >= 0 AND {f} < 500", "0 - 500 m²/yr", "#ffffbf"),
          ("{f} >= 500 AND {f} < 2000", "500 - 2,000 m²/yr", "#fdae61"),
          ("{f} >= 2000 AND {f} < 5000", "2,000 - 5,000 m²/yr", "#f46d43"),
          ("{f} >= 5000", "5,000 m²/yr and more", "#a50026"))


def outline(colour: str, width: float = 0.66) -> QgsFillSymbol:
    """An outline without fill, so the scene stays visible under it."""
    return QgsFillSymbol.createSimple({"style": "no", "outline_color": colour, "outline_width": str(width),
                                       "outline_width_unit": "MM"})


def filled(colour: str) -> QgsFillSymbol:
    """A half-transparent fill with a darker outline."""
    c = QColor(colour)
    return QgsFillSymbol.createSimple({"color": f"{c.red()},{c.green()},{c.blue()},140",
                                       "outline_color": c.darker(160).name(), "outline_width": "0.4",
                                       "outline_width_unit": "MM"})


def labels(expression: str, is_expression: bool) -> QgsVectorLayerSimpleLabeling:
    """White labels with a dark halo, readable over imagery."""
    fmt = QgsTextFormat()
    font = QFont("Sans Serif")
    font.setBold(True)
    fmt.setFont(font)
    fmt.setSize(9)
    fmt.setColor(QColor("white"))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    buffer.setColor(QColor(40, 40, 40))
    fmt.setBuffer(buffer)
    settings = QgsPalLayerSettings()
    settings.fieldName = expression
    settings.isExpression = is_expression
    settings.setFormat(fmt)
    settings.placement = QgsPalLayerSettings.OverPoint
    return QgsVectorLayerSimpleLabeling(settings)


def growth_rules(field: str, symbol, no_rate: str) -> QgsRuleBasedRenderer:
    """Rules by growth rate, with one rule for features that have none (a slump seen on one date)."""
    root = QgsRuleBasedRenderer.Rule(None)
    for expr, label, colour in GROWTH:
        root.appendChild(QgsRuleBasedRenderer.Rule(symbol(colour), 0, 0, expr.format(f=f'"{field}"'), label))
    root.appendChild(QgsRuleBasedRenderer.Rule(outline("#9e9e9e", 0.4), 0, 0, f'"{field}" IS NULL', no_rate))
    return QgsRuleBasedRenderer(root)


def main() -> int:
    """Write slumps.qml, tracks.qml and observations.qml."""
    os.makedirs(STYLES, exist_ok=True)
    slumps = QgsVectorLayer("Polygon?crs=EPSG:3413&field=id:integer&field=score:double", "rts", "memory")
    ranges = [QgsRendererRange(lo, hi, outline(colour), label) for lo, hi, label, colour in SCORES]
    renderer = QgsGraduatedSymbolRenderer("score", ranges)
    renderer.setClassAttribute("score")
    slumps.setRenderer(renderer)
    slumps.setLabeling(labels("id", False))
    slumps.setLabelsEnabled(True)
    tracks = QgsVectorLayer("Polygon?crs=EPSG:3413&field=track_id:string&field=growth_rate_m2_yr:double",
                            "tracks", "memory")
    tracks.setRenderer(growth_rules("growth_rate_m2_yr", filled, "one date only: no rate"))
    tracks.setLabeling(labels("CASE WHEN \"growth_rate_m2_yr\" IS NOT NULL THEN "
                              "format_number(\"growth_rate_m2_yr\", 0) || ' m²/yr' END", True))
    tracks.setLabelsEnabled(True)
    observations = QgsVectorLayer("Polygon?crs=EPSG:3413&field=track_id:string&field=area_rate_m2_yr:double",
                                  "observations", "memory")
    observations.setRenderer(growth_rules("area_rate_m2_yr", outline, "first date: no rate"))
    for layer, name in ((slumps, "slumps"), (tracks, "tracks"), (observations, "observations")):
        # symbology and labels only: loading the style never touches the layer's fields, forms or actions
        message, ok = layer.saveNamedStyle(os.path.join(STYLES, f"{name}.qml"), CATEGORIES)
        if not ok:
            print(f"{name}: {message}", file=sys.stderr)
            return 1
    print(f"wrote {STYLES}/slumps.qml, tracks.qml, observations.qml")
    return 0


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    code = main()
    app.exitQgis()
    sys.exit(code)
