"""Built-in plugins that use the same hooks a third-party plugin uses (auth, stores, ...)."""
