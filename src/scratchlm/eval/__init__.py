"""Evaluation of trained runs: validation loss and perplexity (perplexity.py)."""
