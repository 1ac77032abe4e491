"""Triton Inference Server: the model repository reidctl writes and the bundled server it runs."""
