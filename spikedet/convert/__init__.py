"""spikedet.convert."""
