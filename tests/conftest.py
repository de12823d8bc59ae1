import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

#: Test assets, not tests: their scripts (how an asset was made, with older code) are never collected, not even
#: by ``--doctest-modules``, which would import them.
collect_ignore_glob = ["data/*"]
