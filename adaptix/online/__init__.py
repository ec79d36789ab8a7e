"""The model and what runs it: multi-exit models, their training, the early-exit runtime, the
shift monitor and the CPU allocator.

Import from the modules themselves (``adaptix.online.runtime``, ...); this package re-exports
nothing.
"""
