"""The package version, on the ground floor so that every floor may name it (manifests record it)."""

__version__ = "0.1.0"
