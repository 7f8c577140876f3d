"""longwatch.clients."""
