"""Studies: sweeps of training runs, attacked and summarised into tables and figures.

Each study is one readable script (``python studies/NAME.py --quick``); the shared plumbing
(argument parsing, the sweep loop, attacks with skip-if-done, CSV and Markdown output, the figure
style) lives in :mod:`studies.common`.
"""
