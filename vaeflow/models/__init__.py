"""Encoders, decoders (each owning its likelihood) and the VAE that joins them."""
