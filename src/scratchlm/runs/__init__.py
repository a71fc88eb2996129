"""Run directories: what one training run made (layout, checkpoints, loading a trained model),
and models from elsewhere (Hugging Face folders, GGUF files, pretrained models) made into runs."""
