"""The synthetic character-animation dataset the demo and the tests train on."""
