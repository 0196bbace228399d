"""spikedet.deploy."""
