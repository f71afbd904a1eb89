"""Python-backend model files and the numpy kernels they share; copied verbatim into generated repositories."""
