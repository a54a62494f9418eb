"""Segmentation networks written here (DABNet, ESPNetv2), the 19 -> 8 category fold, and the
string-keyed factory (smp architectures included)."""
