"""Prediction in one place: stage descriptions and model files (:mod:`.stages`), the global-to-local
predictor (:mod:`.predictor`), prediction on image files (:mod:`.predict_files`), calibration
(:mod:`.calibrate`) and TorchScript / ONNX export (:mod:`.export`). Nothing here imports training code."""
