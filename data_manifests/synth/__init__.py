"""The synthetic toy VoxCeleb: procedural voices (``voice``) and faces (``face``) written
as real media (``media``) in the real layouts, with trial lists (``corpus``)."""

from data_manifests.synth.corpus import SynthConfig, make_trials, synthesize
from data_manifests.synth.face import FaceVariation
from data_manifests.synth.voice import VoiceVariation

__all__ = ["FaceVariation", "SynthConfig", "VoiceVariation", "make_trials", "synthesize"]
