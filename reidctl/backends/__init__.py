"""Built-in backends, one module each; reidctl.core.detector imports one by name when it is asked for."""
