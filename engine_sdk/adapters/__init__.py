"""Adapters that connect a trading framework's engine to the control plane through the SDK.

Each adapter is a module of its own: ``nautilus`` imports NautilusTrader, an optional extra of the
SDK (``pip install './engine_sdk[nautilus]'``); ``freqtrade``, a bridge beside a bot, needs
nothing but the SDK. Importing ``engine_sdk`` or this package never imports a framework.
"""
