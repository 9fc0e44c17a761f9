"""Preset run configs for experiments/train.py (each docstring holds the command that runs it)."""
