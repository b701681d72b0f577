"""Case studies reproducing the transcoder paper's circuit analyses on a model with transcoders."""
