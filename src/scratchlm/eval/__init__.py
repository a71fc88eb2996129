"""Evaluation: validation loss and perplexity."""
