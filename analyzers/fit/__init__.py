"""Fitting the scaling laws: seed aggregation, the law-1 window, the pipeline that runs the fitters, bootstraps."""
