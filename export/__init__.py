"""Export stage: checkpoint -> quantized TorchScript / ONNX decoders, encoders, parity gate, manifest."""
