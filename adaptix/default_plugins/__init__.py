"""Built-in plugins: registered through the same marker, hooks and registries as any other."""
