"""Bulk harvester for the Figshare REST, stats and OAI-PMH APIs."""

__version__ = "0.1.0"
