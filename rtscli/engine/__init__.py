"""Training (Lightning), evaluation (pycocotools) and, later, tiled inference."""
