"""The mpod123 backend service: ZeroMQ front door, durable job store, workers.

Built so far: the wire protocol (:mod:`backend.protocol`, standard library
only) and the SQLite job store (:mod:`backend.store`). The ROUTER server, the
workers and CURVE security follow. Never imports bpy.
"""
