"""Thin adapters over the outside world: files, hardware, network, the Hub."""
