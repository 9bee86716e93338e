"""shard package."""
