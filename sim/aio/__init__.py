"""The asyncio runtime: the same sans-I/O machines over real TCP sockets on loopback.

:mod:`sim.aio.frames` is the sans-I/O connection layer (length-prefixed frames, the control
messages, the key proof), :mod:`sim.aio.runtime` the asyncio side (a hub that relays, one task and
one connection per node, jobs in a worker thread).  Neither knows any protocol.
"""
