"""Assembly: configuration, the service tree, the embedded default, admin commands."""
