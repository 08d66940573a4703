"""Data: keypoint format, shard schema, the explicit pose indicator's transforms, and the streaming loader."""
