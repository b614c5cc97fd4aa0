"""Operators: the jobctl CLI, the exporter and their assets."""
