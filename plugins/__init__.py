"""Built-in plugins: measures, fitters, models, datasets, report sections."""
