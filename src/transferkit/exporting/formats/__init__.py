"""Export formats, one module each (see `exporting.registry`). Add a format by adding a module
that calls `register(ExportFormat(...))`, importing torch and the exporters inside its functions."""
