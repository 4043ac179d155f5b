"""Floor 4, verification: an output compared bit for bit with its sources or its manifest.

Imports the source (only when comparing with sources: no torch otherwise), the store and the ground floor.
"""

from pipeline.verify.run import Problem, Report, verify

__all__ = ["Problem", "Report", "verify"]
