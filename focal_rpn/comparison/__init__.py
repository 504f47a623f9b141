"""Comparing models over seeds: tools/compare.py and its FL-RPN preset tools/compare_rpn.py."""
from .cli import main, run_comparison
from .runs import ComparisonError, Entry, build_entries, parse_variant

__all__ = ["ComparisonError", "Entry", "build_entries", "main", "parse_variant", "run_comparison"]
