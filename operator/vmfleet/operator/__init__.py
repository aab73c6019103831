"""The Kubernetes operator: kopf handlers (handlers.py) over plain, testable passes (passes.py)."""
