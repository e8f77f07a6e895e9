"""What each command does once its arguments parse.

Each command's thin CLI (``imgclf/<name>.py``: its ``--help``, its arguments) imports its
module here only after parsing, so ``--help`` and argument errors answer without loading
torch or MLflow.
"""
