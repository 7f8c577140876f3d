"""longwatch.stream."""
