//! Where exported devices come from.

pub mod simulated;
