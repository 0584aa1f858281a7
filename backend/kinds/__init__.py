"""The job kinds the service runs (image, texture, prompt) and the extra views' frames."""
