"""Built-in backends, one module each; reidctl.core.registry imports one by name when it is asked for."""
