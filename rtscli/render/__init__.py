"""Pictures for people: map furniture (scale bar, north arrow, corner coordinates) and quicklooks.

Shared by ``rts predict`` (quicklooks of a scene's slumps) and ``rts track`` (maps of tracks); it reads
scenes through :mod:`rtscli.data.scenes` and knows nothing of models.
"""
