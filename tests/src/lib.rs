//! Helpers for the end-to-end tests: spawn real binaries on port 0 and talk to them.
