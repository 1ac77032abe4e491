"""Applications on the core: detect's pipeline, bench, capacity, recommend and parity."""
