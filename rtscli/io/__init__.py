"""Reading and writing rasters and vectors, with the checks that give users clear errors."""
