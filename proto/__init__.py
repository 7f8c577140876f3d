"""longwatch.proto."""
