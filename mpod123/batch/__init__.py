"""Batch conversion of product photos into Blender assets."""
