"""Multiple-choice task formats, one per file, each read into the Task and Items of task.py:
plain (our JSONL/JSON), bigbench, mmlu, hellaswag and arc; loader.py picks one by flag or by
the file's shape, and prompt.py lays out a question's k-shot prompt."""

from scratchlm.eval.tasks.loader import TASK_FORMATS, detect_format, load_tasks
from scratchlm.eval.tasks.prompt import fewshot_examples, prompt_text
from scratchlm.eval.tasks.task import Item, Task

__all__ = [
    "TASK_FORMATS",
    "Item",
    "Task",
    "detect_format",
    "fewshot_examples",
    "load_tasks",
    "prompt_text",
]
