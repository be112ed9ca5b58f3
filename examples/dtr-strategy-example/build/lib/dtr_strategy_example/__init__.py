"""An example third-party strategy package for dtr-plugins."""
