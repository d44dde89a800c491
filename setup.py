"""Packaging for balancer: the library packages and the twistd plugin."""

from setuptools import find_packages, setup

setup(
    name="balancer",
    version="0.1.0",
    description="An L4 load balancer (TCP, TLS, UDP) on Twisted, configured like gobetween",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["balancer", "balancer.*", "admin", "admin.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["balancer_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "klein>=23.5",
        "treq>=23.11",
        "tomli-w>=1.0",
        "service-identity>=23.1",
        "pyopenssl>=23.2",
        "attrs>=23.1",
        "bcrypt>=4.0",
        "werkzeug>=2.0",
        "prometheus-client>=0.17",
        "jsonpatch>=1.33",
        "jsonpointer>=2.4",
    ],
    extras_require={
        "test": ["cryptography>=41", "openapi-spec-validator>=0.7", "schemathesis>=4.0", "hypothesis>=6.100"],
    },
)
