"""Build the one C extension (the Gen1 .dat decoder); everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and ``read_dat`` uses its
numpy decoder (same results, slower); tests/test_gen1_read_speed_paths.py checks that the
extension is present in the project's own environments.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spikedet.data._datdecode",
            ["spikedet/data/_datdecode.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
