"""The checkpoint store: the safetensors + model card format, model names and the zoo, and the
importers of upstream weights (which never unpickle)."""
