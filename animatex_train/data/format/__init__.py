"""The on-disk contract shared with ``preprocess/``: keypoints, sample schema, manifests, shard reading (numpy only)."""
