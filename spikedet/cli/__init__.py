"""spikedet.cli."""
