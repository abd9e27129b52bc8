"""Built-in reports plugins."""
