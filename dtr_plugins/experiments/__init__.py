"""Experiments: suites, reports, paired comparisons, plots and ``dtr runs`` tables."""
