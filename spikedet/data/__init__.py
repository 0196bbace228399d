"""spikedet.data: dataset readers, event representations, synthetic generators and loaders,
shared by train and deploy. Everything but ``loader`` imports without torch."""
