"""Wire formats as pure state machines: bytes in, events out, no I/O."""
