"""Click commands: one thin module per command over the pipeline's Python API.

Shared options and their parsers live in ``options``, how a command ends in ``command``; the list of commands,
loaded lazily, in ``pipeline.cli``.
"""
