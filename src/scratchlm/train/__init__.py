"""Pretraining: the loop, our own AdamW, the learning-rate schedule, checkpoints and metrics."""
