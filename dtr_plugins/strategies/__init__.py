"""Built-in routing strategies; each module is a plugin registered through the package's entry points."""
