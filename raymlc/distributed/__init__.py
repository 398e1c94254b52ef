"""Thin Ray layers over the pure core: Train, Data scoring/flagging, Tune, relabeling."""
