"""The model stage: recgen's reference DLRM, its file format and the bundled examples."""
