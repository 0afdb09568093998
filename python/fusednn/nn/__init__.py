"""Drop-in replacements for torch.nn modules (same arguments, parameter names and state_dict).
Every name in a family module's ``__all__`` is exported here."""

from .._runtime import export_families

__all__ = export_families(__name__, __path__, globals())
