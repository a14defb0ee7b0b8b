"""One port for every protocol: the listener that tells the protocol from the first bytes."""
