"""Analytics publishes no events yet; it consumes tickets events (see consumers.py)."""
