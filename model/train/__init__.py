"""Training: the trainer, its data (synthetic footage and needles, a user's JSONL) and the demo model's recipe."""
