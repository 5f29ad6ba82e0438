//! reference: owned by the OCI protocol layer (in progress).
