"""spikedet.train.data."""
