"""Inference: streamed sliding-window stitching (`stitch`), test-time augmentation (`tta`),
and the ensemble of run directories / checkpoints (`ensemble`)."""
