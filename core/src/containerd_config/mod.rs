//! containerd configuration checks (in progress).
