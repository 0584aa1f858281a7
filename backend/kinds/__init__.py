"""The job kinds the service runs (image, texture, prompt), the extra views' frames, what the kinds share
(common) and the job functions that route a job to its kind (dispatch)."""
