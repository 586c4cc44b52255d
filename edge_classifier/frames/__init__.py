"""Frames: image files and camera frames in, HxWx3 uint8 RGB out (replay, picamera2, colour
conversion, the one shared preprocessing function)."""
