"""Networking: the authenticated wire envelope and transports."""
