"""The only place numba is imported. Modules here are loaded lazily by their NumPy twins."""
