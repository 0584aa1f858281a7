"""Blender data only: properties, preferences' fields, inputs, extra views, candidates, previews, the importer, the texture target."""
