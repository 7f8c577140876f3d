"""longwatch.model."""
