"""Decoding media into arrays: audio (PyAV, soundfile) and face frames (PyAV, JPEG folders)."""

from extractors.media.decode import centre_crop_resize, frame_indices, load_audio, load_faces, resample

__all__ = ["centre_crop_resize", "frame_indices", "load_audio", "load_faces", "resample"]
