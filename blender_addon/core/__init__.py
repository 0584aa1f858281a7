"""Plain Python, no bpy: the vendored protocol and client, the connection thread, the job file, the managed environment."""
