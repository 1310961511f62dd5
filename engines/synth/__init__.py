"""Physics-based synthetic data with ground truth; every generator takes a seed."""
