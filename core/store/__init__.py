"""Storage backends behind one zope.interface API."""

from .interfaces import IStore, StoreSnapshot
from .memory import MemoryStore

__all__ = ["IStore", "StoreSnapshot", "MemoryStore"]
