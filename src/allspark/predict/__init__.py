"""Prediction, one room: whole image, sliding and tiled windows (`windows`, `tiled`), the PyTorch and onnxruntime
backends (`backends`), the `Predictor` and the files `allspark predict` writes (`predictor`, `outputs`), and the
ONNX export (`export`). Re-exports nothing: importing the package must not load torch."""
