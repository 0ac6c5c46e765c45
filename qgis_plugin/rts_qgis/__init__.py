"""rts in QGIS: a Processing provider that runs the ``rts`` command line (rts and QGIS's Python stay separate: QGIS
never imports rts or torch) and loads its outputs styled."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """The plugin object (QGIS calls this when it loads the plugin).

    Args:
        iface: QGIS's interface (None in ``qgis_process``).

    Returns:
        The :class:`rts_qgis.plugin.RtsPlugin`.
    """
    from .plugin import RtsPlugin

    return RtsPlugin(iface)
