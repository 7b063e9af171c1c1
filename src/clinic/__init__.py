"""clinic: defend LLM fine-tuning against harmful fine-tuning.

Stages: curate -> align -> finetune -> evaluate -> report. Each stage is a function from a
config and an input directory to an output directory that records its config.
"""

__version__ = "0.1.0"
