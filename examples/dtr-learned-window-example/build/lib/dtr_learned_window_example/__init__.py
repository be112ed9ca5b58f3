"""A learned soft channel window per timestep: an example of dtr-plugins' routing contract v2."""
