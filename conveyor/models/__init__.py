"""Models ready to pipeline: a small GPT written here, and an adapter that
cuts decoder-only Hugging Face causal LMs into stages (``conveyor[hf]``).

Needs torch.
"""

from conveyor.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
