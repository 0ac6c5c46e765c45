"""rts: map Arctic retrogressive thaw slumps, one slump at a time."""

__version__ = "0.1.0"
