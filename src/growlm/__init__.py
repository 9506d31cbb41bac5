"""growlm: pretrain LLMs in stages — grow, reuse, freeze, adapt."""

__version__ = "0.1.0"
