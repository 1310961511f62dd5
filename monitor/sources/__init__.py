"""Frame sources: array10 (ZMQ multipart), replay (HDF5/TIFF/directory)."""
