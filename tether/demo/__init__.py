"""The bundled demo: ``tether demo`` runs a multi-team example against a local service.

See :func:`tether.demo.run.run_demo`.
"""

from tether.demo.run import CaseResult, DemoResult, run_demo

__all__ = ["CaseResult", "DemoResult", "run_demo"]
