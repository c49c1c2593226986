"""The node side: the runtime that owns pods and the spawner that works inside them."""
