//! hosts.toml rendering and the configuration/cleanup plan (in progress).
