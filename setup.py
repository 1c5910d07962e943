# Builds the optional C extension when a compiler is present; without one quantcli installs and runs on NumPy.
from setuptools import setup

try:
    from quantcli_build import native_extensions  # type: ignore[import-not-found]
except ImportError:
    native_extensions = None

setup(**({"ext_modules": native_extensions(), "cmdclass": {}} if native_extensions else {}))
