"""Built-in fitters plugins."""
