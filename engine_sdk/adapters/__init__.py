"""Adapters that connect a trading framework's engine to the control plane through the SDK.

Each adapter is a module of its own and imports its framework, which is an optional extra of the
SDK (``pip install './engine_sdk[nautilus]'``): importing ``engine_sdk`` or this package never
imports a framework.
"""
