"""Prediction: predictors for a trained bundle (`torch_predictor`) and for an exported ONNX
model (`onnx_predictor`, torch-free), their shared batching (`base`) and what they write
(`outputs`)."""
