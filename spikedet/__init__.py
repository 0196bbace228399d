"""spikedet: spiking object detectors from PyTorch training to Loihi-style deployment.

Subpackages: ``train`` (torch), ``convert`` (torch + NIR), ``deploy`` and ``sim`` (numpy only;
they also run inside the Lava environment). Package ``__init__`` files import nothing so that
``import spikedet.deploy`` never pulls in torch.
"""

__version__ = "0.1.0"
