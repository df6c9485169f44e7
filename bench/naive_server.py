"""The server of the usual tutorial, for `bench/serve.py` to compare with: FastAPI, one image per
request, the model called inside the request handler (on the event loop), torchvision transforms.
The model is transferkit's bundle (the same weights) as a plain PyTorch module in eval mode.

    TRANSFERKIT_NAIVE_RUN=runs/x uvicorn naive_server:app --app-dir bench --port 8001
"""

import io
import os

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

from transferkit.models import bundle

model, meta, _ = bundle.load(os.environ["TRANSFERKIT_NAIVE_RUN"])
model.eval()
pre = meta.preprocess
transform = transforms.Compose([
    transforms.Resize(pre.resize_size, interpolation=transforms.InterpolationMode(pre.interpolation)),
    transforms.CenterCrop(pre.input_size), transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    image = Image.open(io.BytesIO(await file.read())).convert("RGB")
    with torch.no_grad():
        probs = torch.softmax(model(transform(image).unsqueeze(0)), 1)[0]
    p, i = probs.max(0)
    return {"label": meta.classes[int(i)], "probability": float(p)}


@app.get("/health")
async def health():
    return {"status": "ok"}
