"""Built-in measures plugins."""
