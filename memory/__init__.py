"""longwatch.memory."""
