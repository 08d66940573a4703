"""Training infrastructure applied from outside the model: strategies, checkpoints, callbacks, optimizers."""
