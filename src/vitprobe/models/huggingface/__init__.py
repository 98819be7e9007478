"""Hugging Face transformers families: one module each, describing its model with an ``HfFamily``."""
