"""scratchlm: build a large language model from scratch.

The pipeline, one package per stage: data -> tokenizer -> model -> train -> generate -> eval.
"""

__version__ = "0.1.0"
