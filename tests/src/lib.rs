//! Integration tests live in `pipeline/`; this library is empty.
