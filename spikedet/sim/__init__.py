"""spikedet.sim."""
