"""The implicit pose indicator (IPI): keypoints + driving CLIP features -> motion tokens."""
