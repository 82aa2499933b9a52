"""Click commands: one thin module per command over the pipeline's Python API.

Shared options, their parsers and how a command ends live in ``options``; the list of commands,
loaded lazily, in ``pipeline.cli``.
"""
