"""Ray stages: per stage a callable class and ``run_<stage>(...) -> summary dict``."""
