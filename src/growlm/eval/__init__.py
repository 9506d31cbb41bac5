"""Evaluation: perplexity, zero-shot multiple choice, word similarity, neighbour overlap."""

from growlm.eval.loading import load_for_eval
from growlm.eval.neighbours import neighbour_overlap
from growlm.eval.perplexity import text_perplexity, token_perplexity, wikitext_perplexity
from growlm.eval.suite import ALL_TASKS, evaluate, flatten_results, format_table
from growlm.eval.wordsim import word_similarity
from growlm.eval.zeroshot import evaluate_task

__all__ = [
    "ALL_TASKS",
    "evaluate",
    "evaluate_task",
    "flatten_results",
    "format_table",
    "load_for_eval",
    "neighbour_overlap",
    "text_perplexity",
    "token_perplexity",
    "wikitext_perplexity",
    "word_similarity",
]
