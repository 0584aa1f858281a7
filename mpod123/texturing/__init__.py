"""Texturing a mesh the artist already has: `mpod123 texture` and `mpod123 bench texture`.

``normalisation``: the similarity that puts the mesh into the unit sphere and back.
``camera_file``: the camera JSON schema (position, look-at, vertical field of view).
``uv_usability``: whether the mesh's own UVs can carry the bake.
``runner``: photo + mesh -> textured GLB (textual inversion, the texturing stage, the bake).
``bench``: the weight-free benchmark on the procedural object's true mesh.
"""
