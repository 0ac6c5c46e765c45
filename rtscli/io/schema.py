"""Names shared by the files rts writes and reads: layer suffixes, Shapefile field names, ARTS field names.

``rts predict`` writes them, ``rts track``, ``rts export`` and ``rts prepare`` read them: one place, so that
a writer and its readers cannot drift apart.
"""

from __future__ import annotations

from typing import Any


#: Shapefile field names (at most 10 characters) of the rts predict fields that are longer
SHP_NAMES = {"perimeter_m": "perim_m", "touches_nodata": "touch_nd", "touches_edge": "touch_edge"}


#: the layer suffix of a map's coverage (``rts predict`` writes ``rts_footprint`` beside ``rts``)
FOOTPRINT_SUFFIX = "_footprint"


#: the ARTS data set's TrainClass field (and the Shapefile abbreviation of the ARTS tutorial)
TRAIN_CLASS = ("TrainClass", "TrnClss")


def footprint_layer(layer: str) -> str:
    """The name of the layer that holds a map's footprint (``rts_footprint`` beside ``rts``)."""
    return f"{layer}{FOOTPRINT_SUFFIX}"


def column(gdf: Any, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a column of ``gdf`` (case-insensitive), or None."""
    lower = {str(c).lower(): c for c in gdf.columns}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None
