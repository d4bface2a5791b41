//! agora end-to-end tests
