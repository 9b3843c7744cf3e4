"""A toy medret plug-in (see declarations.py)."""
