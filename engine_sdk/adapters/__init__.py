"""Adapters that connect existing trading frameworks to the control plane."""
