"""Kuryr: container networking from OpenStack Neutron."""

# The one place the version is written: pyproject.toml reads it from here
# ([tool.setuptools.dynamic], statically, without importing the package), and
# `kuryr --version` prints it.
__version__ = "0.1.0"
