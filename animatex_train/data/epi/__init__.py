"""The explicit pose indicator (paper section 3.3): pose realignment, rescaling, the anchor pool and a preview."""
