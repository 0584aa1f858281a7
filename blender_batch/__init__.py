"""Batch conversion: a folder of product photos to Blender .blend assets, through the backend and the bpy module."""
