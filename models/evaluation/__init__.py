"""Evaluation: metrics (IoU, confusion), roadseg eval, and its report."""
