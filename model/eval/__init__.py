"""Evaluation: clip checks in process, the needle grid and the demo through the real service."""
