"""Engine: the smoothed classifier, the PGD optimiser, metrics and the config sweep."""
