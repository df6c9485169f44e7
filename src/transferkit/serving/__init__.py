"""Serving a trained model over HTTP: the ASGI application (`app`: the API, its docs and the web
page), the dynamic batcher that gathers the images of concurrent requests for the model
(`batcher`), the request-size and logging middleware (`limits`), the model behind it, a torch
bundle or a torch-free ONNX file (`model`), and the uvicorn server with its safety checks
(`server`). Nothing here imports torch unless the model is a torch bundle."""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
