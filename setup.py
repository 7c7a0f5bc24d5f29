"""The compiled part of the package only; everything else about the project is in pyproject.toml.

services/validator/_fastpath.c is the validator's token check, HMAC and digest lookup in C (linked with
OpenSSL's libcrypto). `optional=True`: without a compiler or the OpenSSL headers the install still
succeeds and the validator runs its Python fallback, which gives the same answers, only slower
(`services.validator.keyring.COMPILED` says which one runs; CI insists on the compiled one).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.validator._fastpath",
            sources=["services/validator/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
