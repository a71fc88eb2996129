"""Inference: load a run for generation, the decoding engine, sampling, stop strings, chat
templates, dtype choice and weight-only quantisation. The entry point is
language_model.load_for_inference."""
