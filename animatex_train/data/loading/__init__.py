"""The streaming training loader: epoch plan, shard stream, sample assembly, the Batch and the datamodule."""
