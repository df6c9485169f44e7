"""`transferkit studio`: one local web app for the loop of looking at the data, fixing it,
training, comparing runs and shipping, over the Python API and the CLI's commands (`app`), with
the datasets it shows (`datasets`), the work queue (`jobs`) and the run pages' data (`views`)."""
