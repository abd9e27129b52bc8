"""normdyn.trainer: models are trained here into stores (training loop, sweeps)."""
