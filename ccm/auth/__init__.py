"""API keys, roles and the dependencies every endpoint uses to require them."""
