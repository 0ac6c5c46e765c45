"""Running models: training (Lightning), evaluation (pycocotools), prediction of one scene and of many."""
