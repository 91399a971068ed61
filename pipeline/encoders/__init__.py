"""Encoders: text and images → L2-normalised CLIP vectors, behind one Protocol."""

from pipeline.encoders.base import Encoder, EncoderInfo

__all__ = ["Encoder", "EncoderInfo"]
