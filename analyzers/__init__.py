"""normdyn.analyzers: consume stores (measures over checkpoints, aggregation, fits, reports)."""
