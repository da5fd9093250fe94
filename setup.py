"""Build hook: setuptools needs setup() to compile the cffi extension of the C core."""
from setuptools import setup

setup(cffi_modules=["capfan/_core/build.py:ffibuilder"])
