# Builds the optional C quantizer library (quantcli_build.py) when a compiler is present. The extension is
# optional: a failed compile prints a warning and the install continues; quantcli then runs on NumPy.
import os
import sys

from setuptools import setup

# PEP 517 builds do not put the project root on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from quantcli_build import native_extensions
except ImportError:  # a source tree without the build helper: pure NumPy install
    ext_modules = []
else:
    ext_modules = native_extensions()

setup(ext_modules=ext_modules)
