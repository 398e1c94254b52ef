"""The tagger's HTTP service: `protocol` (request parsing and response shaping; no web framework, no Ray) and
`app` (the FastAPI app with its JSON errors and Prometheus metrics; the `serve` extra). Ray Serve runs the app
in `raymlc.distributed.serving`."""
