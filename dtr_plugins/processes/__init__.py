"""Built-in diffusion processes; each module is a plugin registered through the package's entry points."""
