"""vitprobe: see what Vision Transformers attend to, and measure it."""
