"""loraforge's Kubernetes operator (kopf).

The import package is ``loraforge_operator``, not ``operator``, which would
shadow the standard library module of that name.
"""

__version__ = "0.1.0.dev0"
