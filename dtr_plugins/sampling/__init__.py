"""The sampling path: ``dtr sample`` and in-memory generation."""
