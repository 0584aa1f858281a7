"""The mpod123 backend service: ZeroMQ front door, durable job store, workers.

The wire protocol (:mod:`backend.protocol`, standard library only), the SQLite
job store (:mod:`backend.store`), the ROUTER server (:mod:`backend.server`),
the local and Ray executors (:mod:`backend.workers`, :mod:`backend.ray_executor`),
CURVE security (:mod:`backend.security`), the job kinds (:mod:`backend.kinds`)
and the client. Never imports bpy; mpod123 only inside the job functions.
"""
