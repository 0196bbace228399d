"""spikedet.train.models."""
