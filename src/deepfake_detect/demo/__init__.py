"""The quickstart: a demo dataset of procedural faces (:mod:`.faces`) and the one command that
generates it, trains, evaluates and predicts (:mod:`.quickstart`)."""
