"""Export: deployable artifacts of a run, each checked against the PyTorch model.

`registry` holds the formats (one module each in `formats/`), `exporter` builds and checks them,
`verify` measures an artifact against the PyTorch model on the run's validation images.
"""
