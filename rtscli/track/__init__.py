"""Thaw slumps through time: ``rts track`` and the ARTS schema.

* :mod:`~rtscli.track.dates`: the date of a map (``--dates``, a date field, a scene or file name);
* :mod:`~rtscli.track.maps`: slump maps of several dates read into one equal-area frame, with their coverage;
* :mod:`~rtscli.track.change`: the overlap graph between consecutive dates, the per-slump relations
  (new, continued, merged, split, disappeared, stabilized), stable track ids and growth figures;
* :mod:`~rtscli.track.figures`: the growth plot and the track quicklook;
* :mod:`~rtscli.track.arts`: the ARTS data set's fields, UID and change relations, in and out.
"""
