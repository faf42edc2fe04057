"""Evaluating edits: what ``smartedit eval`` measures (``metrics``) and how it runs a folder's edits (``suite``)."""
