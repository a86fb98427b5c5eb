"""The detection library: engine-agnostic features, clustering and detectors."""
