"""Storage backends behind one zope.interface API."""

from .interfaces import IPagingStore, IStore, StoreSnapshot
from .memory import MemoryStore

__all__ = ["IPagingStore", "IStore", "StoreSnapshot", "MemoryStore"]
