"""vmfleet: fleets of KVM virtual machines on copy-on-write clones, kept converged."""

__version__ = "0.1.0"
