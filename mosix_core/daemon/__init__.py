"""mosd, the node daemon."""
