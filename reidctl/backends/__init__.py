"""Built-in backends, one module each; reidctl.engine.detector imports one by name when it is asked for."""
