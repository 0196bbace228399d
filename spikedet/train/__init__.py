"""spikedet.train."""
