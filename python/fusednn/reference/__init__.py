"""Plain-PyTorch references of every fusednn op: short, readable, any dtype and device.
Every name in a family module's ``__all__`` is exported here."""

from .._runtime import export_families

__all__ = export_families(__name__, __path__, globals())
