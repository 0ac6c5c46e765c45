"""Reading data: scenes by window, band maps, modalities, units, labels, COCO, ``rts prepare`` and training samples."""
